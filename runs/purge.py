"""Deleting runs with everything under them, in batches: the one path the retention reaper
(services/retention.py) and background deletion (runs/deletion.py) share.

A batch is a fixed handful of statements whatever its size: child runs started by the doomed task
runs lose that link (the ORM's SET_NULL), then logs, state history, task runs and the runs go, each
by one plain DELETE on an indexed foreign key. The ORM's cascade is bypassed on purpose: it would
load every row into Python first.

Two copies at once take disjoint batches: on PostgreSQL the batch's runs are picked FOR UPDATE SKIP
LOCKED inside the batch's transaction; SQLite's IMMEDIATE transactions let one writer at a time. A
row already deleted is simply not found again, so a batch cut short by a crash loses nothing.

Events about the runs are not deleted here: they live in day partitions with their own retention
(`Workspace.event_retention_days`, events/partitions.py drops whole days), and finding one run's
events would scan them all. A deleted workspace's events go with it (runs/deletion.py).
"""

from django.db import connection, transaction

from runs.models import FlowRun, Log, StateChange, TaskRun


def purge_runs(run_ids):
    """Delete the runs `run_ids` with their task runs, history and logs; returns
    {"runs": n, "rows": every row deleted}. Call it inside a transaction."""
    if not run_ids:
        return {"runs": 0, "rows": 0}
    doomed_tasks = TaskRun.objects.filter(flow_run_id__in=run_ids).values("pk")
    # Runs a doomed task run started (in the batch or not) keep existing without that link.
    FlowRun.objects.filter(parent_task_run_id__in=doomed_tasks).update(parent_task_run=None)
    rows = 0
    # A task run's logs and history name its flow run too, so these two catch them.
    rows += Log.objects.filter(flow_run_id__in=run_ids)._raw_delete(Log.objects.db)
    rows += StateChange.objects.filter(flow_run_id__in=run_ids)._raw_delete(StateChange.objects.db)
    rows += TaskRun.objects.filter(flow_run_id__in=run_ids)._raw_delete(TaskRun.objects.db)
    runs = FlowRun.objects.filter(pk__in=run_ids)._raw_delete(FlowRun.objects.db)
    return {"runs": runs, "rows": rows + runs}


def purge_batch(runs, size):
    """Delete at most `size` runs of the queryset `runs` (the oldest id first is not promised) with
    everything under them, in one transaction; returns {"runs": n, "rows": n}. Runs another copy is
    deleting right now (PostgreSQL row locks) are skipped, not waited for."""
    with transaction.atomic():
        picked = runs.order_by().values_list("pk", flat=True)
        if connection.vendor == "postgresql":
            picked = picked.select_for_update(skip_locked=True, of=("self",))
        return purge_runs(list(picked[:size]))
