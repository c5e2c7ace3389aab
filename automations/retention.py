"""Retention of firings and deliveries: each workspace keeps them for its event retention
(`Workspace.event_retention_days`), as its events. Run by the automations-proactive service;
bounded like the events' retention (events/retention.py, the same loop): batches of
EVENT_RETENTION_BATCH_SIZE rows, at most EVENT_RETENTION_MAX_BATCHES a pass and a table. A
pending delivery is never deleted, however old (it is still to be sent); a delivered or failed
one goes with its age. Two copies at once delete disjoint or already-deleted rows: harmless.
"""

from django.conf import settings

from automations.models import Delivery, DeliveryStatus, Firing
from events.retention import delete_past_retention


def delete_expired(now):
    """Delete the firings and finished deliveries past their workspace's retention; returns counts."""
    batch = settings.ORCHESTRATOR["EVENT_RETENTION_BATCH_SIZE"]
    budget = batch * settings.ORCHESTRATOR["EVENT_RETENTION_MAX_BATCHES"]
    return {
        "expired_deliveries_deleted": delete_past_retention(
            Delivery, "created", now, budget=budget, batch=batch,
            status__in=[DeliveryStatus.DELIVERED, DeliveryStatus.FAILED]),
        # Deleting a firing sets its deliveries' firing to NULL (one UPDATE a batch).
        "expired_firings_deleted": delete_past_retention(Firing, "fired", now, budget=budget, batch=batch),
    }
