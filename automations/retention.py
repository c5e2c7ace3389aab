"""Retention of firings and deliveries: each workspace keeps them for its event retention
(`Workspace.event_retention_days`), as its events. Run by the automations-proactive service;
bounded like the events' retention (events/partitions.py delete_expired): batches of
EVENT_RETENTION_BATCH_SIZE rows, at most EVENT_RETENTION_MAX_BATCHES a pass and a table. A
pending delivery is never deleted, however old (it is still to be sent); a delivered or failed
one goes with its age. Two copies at once delete disjoint or already-deleted rows: harmless.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction

from automations.models import Delivery, DeliveryStatus, Firing


def _expired(model, date_field, now, budget, batch, **extra):
    from runs.models import Workspace

    retentions = {}
    for ws_id, days in Workspace.objects.values_list("id", "event_retention_days"):
        retentions.setdefault(days, []).append(ws_id)
    deleted = 0
    for days, workspace_ids in sorted(retentions.items()):  # one query per distinct retention
        cutoff = now - timedelta(days=days)
        while deleted < budget:
            where = {"workspace_id__in": workspace_ids, f"{date_field}__lt": cutoff, **extra}
            ids = list(model.objects.filter(**where).order_by(date_field, "pk")
                       .values_list("pk", flat=True)[:min(batch, budget - deleted)])
            if not ids:
                break
            with transaction.atomic():
                # Deleting a firing sets its deliveries' firing to NULL (one UPDATE a batch).
                model.objects.filter(pk__in=ids, **where).delete()
            deleted += len(ids)
    return deleted


def delete_expired(now):
    """Delete the firings and finished deliveries past their workspace's retention; returns counts."""
    batch = settings.ORCHESTRATOR["EVENT_RETENTION_BATCH_SIZE"]
    budget = batch * settings.ORCHESTRATOR["EVENT_RETENTION_MAX_BATCHES"]
    return {
        "expired_deliveries_deleted": _expired(Delivery, "created", now, budget, batch,
                                               status__in=[DeliveryStatus.DELIVERED, DeliveryStatus.FAILED]),
        "expired_firings_deleted": _expired(Firing, "fired", now, budget, batch),
    }
