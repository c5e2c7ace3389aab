"""Deleting what outlived its workspace's event retention (`Workspace.event_retention_days`), in
bounded batches: the events themselves (events/partitions.py) and automations' firings and
deliveries (automations/retention.py) share this loop.

One query per distinct retention, not per workspace; each batch is a SELECT of ids and a DELETE
of those still expired, in its own transaction. Two copies at once delete disjoint or
already-deleted rows: harmless.
"""

from datetime import timedelta

from django.db import transaction


def delete_past_retention(model, date_field, now, *, budget, batch, raw=False, **extra):
    """Delete rows of `model` whose `date_field` is older than their workspace's event retention
    (and that match `extra`), at most `budget` of them; returns how many.

    `raw`: one plain DELETE a batch, for a model nothing points at (the events); otherwise the
    ORM's delete, which also handles what points at the rows (a firing's deliveries).
    """
    from runs.models import Workspace

    retentions = {}
    for ws_id, days in Workspace.objects.values_list("id", "event_retention_days"):
        retentions.setdefault(days, []).append(ws_id)
    deleted = 0
    for days, workspace_ids in sorted(retentions.items()):
        cutoff = now - timedelta(days=days)
        while deleted < budget:
            where = {"workspace_id__in": workspace_ids, f"{date_field}__lt": cutoff, **extra}
            ids = list(model.objects.filter(**where).order_by(date_field, "pk")
                       .values_list("pk", flat=True)[:min(batch, budget - deleted)])
            if not ids:
                break
            with transaction.atomic():
                doomed = model.objects.filter(pk__in=ids, **where)
                if raw:
                    deleted += doomed._raw_delete(model.objects.db)
                else:
                    doomed.delete()
                    deleted += len(ids)
    return deleted
