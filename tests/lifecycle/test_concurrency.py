"""Two copies of the retention pass, or of a deletion job's hand-over, at once (PostgreSQL: real
concurrent transactions); and every retention step is an index scan there."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections

from runs import deletion
from runs.models import DeletionJob, DeletionState, FlowRun, Log, State, TaskRun
from services import retention

from .conftest import NOW, finished_runs

postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'",
                                   reason="concurrency and plans are proven on PostgreSQL (CI always has it)")


def at_once(count, work):
    """Run `work()` in `count` threads started together; returns their results."""
    barrier, results, errors = threading.Barrier(count), [], []

    def run():
        try:
            barrier.wait()
            results.append(work())
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_retention_passes_at_once_count_and_delete_each_run_once(ws, flow, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RETENTION_BATCH_SIZE": 25, "RETENTION_MAX_BATCHES": 40}
    runs = finished_runs(flow, 300, ended=NOW - timedelta(days=31), tasks=1, logs=1)
    kept = finished_runs(flow, 10, ended=NOW - timedelta(days=3), tasks=1, logs=1)
    passes = at_once(2, lambda: retention.run_once(NOW))
    passes.append(retention.run_once(NOW))  # whatever a copy left to the other, the next pass finds
    for step in ("runs_expiring", "runs_hidden", "runs_deleted"):
        assert sum(p[step] for p in passes) == 300, (step, passes)
    assert sum(p["rows_deleted"] for p in passes) == 300 * 5  # a run, a task run, 2 history rows, 1 log
    assert sum(p["workspaces_failed"] for p in passes) == 0
    assert not FlowRun.objects.filter(pk__in=[r.pk for r in runs]).exists()
    assert FlowRun.objects.filter(pk__in=[r.pk for r in kept]).count() == 10
    assert TaskRun.objects.count() == 10 and Log.objects.count() == 10


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_services_at_once_hand_a_stale_job_to_one_worker(ws, flow):
    job = DeletionJob.objects.create(workspace=ws, workspace_name=str(ws), target_type="flow", target_id=str(flow.pk),
                                     target_name=flow.name, requested_by="ada", via="api", state=DeletionState.RUNNING,
                                     lease_expires_at=NOW - timedelta(seconds=1))
    taken = at_once(4, lambda: deletion.take_over_stale(NOW))
    assert sorted(len(t) for t in taken) == [0, 0, 0, 1]
    winner = next(t for t in taken if t)[0]
    job.refresh_from_db()
    assert winner == (job.pk, job.holder)


def plan(queryset):
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # a table this small would be scanned whole anyway
    try:
        return queryset.explain()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = on")


@postgres_only
@pytest.mark.django_db
def test_every_retention_step_reads_through_its_index(ws, flow):
    cutoff = NOW - timedelta(days=30)
    # A workspace as retention meets it: many finished runs, few of them due, a few expired or hidden;
    # with statistics, so that the planner weighs the indexes as it would on a real table (on an
    # empty one the dashboard's partial indexes tie with these).
    FlowRun.objects.bulk_create(
        [FlowRun(workspace=ws, flow=flow, state=State.COMPLETED, scheduled_start=NOW - timedelta(days=i % 29),
                 end_time=NOW - timedelta(days=i % 29)) for i in range(2000)]
        + [FlowRun(workspace=ws, flow=flow, state=State.FAILED, scheduled_start=cutoff - timedelta(days=2),
                   end_time=cutoff - timedelta(days=1)) for _ in range(20)]
        + [FlowRun(workspace=ws, flow=flow, state=State.COMPLETED, scheduled_start=cutoff, end_time=cutoff,
                   expires_at=NOW - timedelta(hours=1)) for _ in range(20)]
        + [FlowRun(workspace=ws, flow=flow, state=State.COMPLETED, scheduled_start=cutoff, end_time=cutoff,
                   expires_at=cutoff, deleted_at=NOW - timedelta(hours=1)) for _ in range(20)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runs_flowrun")
    steps = {
        "flowrun_retention_due": FlowRun.objects.filter(
            workspace_id=ws.pk, state__in=retention.FINISHED, expires_at__isnull=True, deleted_at__isnull=True,
            end_time__lt=cutoff),
        "flowrun_expired": FlowRun.objects.filter(workspace_id=ws.pk, expires_at__lte=NOW, deleted_at__isnull=True,
                                                  state__in=retention.FINISHED),
        "flowrun_soft_deleted": FlowRun.objects.filter(workspace_id=ws.pk, deleted_at__isnull=False),
    }
    for index, queryset in steps.items():
        text = plan(queryset.order_by().values("pk")[:1000])
        assert index in text and "Seq Scan" not in text, text
    logs = Log.objects.filter(workspace_id=ws.pk, timestamp__lt=cutoff, flow_run__state__in=retention.FINISHED,
                              flow_run__end_time__lt=cutoff).order_by().values("pk")[:1000]
    assert "Seq Scan" not in plan(logs)
