"""Data lifecycle: the retention pass beside a raw DELETE of the same rows, and a background
deletion's request beside a do-nothing API call, same run.

Sizes: BENCH_RETENTION_RUNS (default 20,000; the issue's figure is 1,000,000) expired runs, each with
a task run, 2 history rows and 2 log lines; BENCH_DELETION_RUNS (default 100,000) runs of the flow
deleted over the API. Order, so both deletions meet the same table: the rows are loaded and deleted
by the raw DELETE (timed), loaded again, then deleted by retention passes (timed, as many passes as
it takes). The flow's rows are then loaded, its DELETE request is timed, and the job that follows.
"""

import os
import time
from datetime import datetime, timedelta, timezone

from django.conf import settings
from django.db import connection, transaction
from rest_framework.test import APIClient

from runs import deletion
from runs.models import Actor, Flow, FlowRun, Log, Role, State, StateChange, TaskRun, Workspace
from runs.models.workspaces import Account
from services import retention
from tests import factories

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
CHUNK = 5000


def empty_run_tables():
    tables = [m._meta.db_table for m in (Log, StateChange, TaskRun, FlowRun)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")


def load_runs(flow, count, *, ended, tasks=1, logs=2):
    """`count` finished runs of `flow` with `tasks` task runs each, a history row per run and task
    run, and `logs` log lines per task run; bulk-loaded in chunks. On PostgreSQL the first chunk is
    made through the ORM and the others are copies of it made in SQL (`replicate`): a million runs
    with their rows in minutes instead of most of an hour."""
    if connection.vendor == "postgresql" and count >= 2 * CHUNK:
        load_runs(flow, CHUNK, ended=ended, tasks=tasks, logs=logs)
        template = list(FlowRun.objects.filter(flow=flow).values_list("pk", flat=True))
        replicate(template, count // CHUNK - 1)
        load_runs(flow, count % CHUNK, ended=ended, tasks=tasks, logs=logs)
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {', '.join(m._meta.db_table for m in (FlowRun, TaskRun, StateChange, Log))}")
        return
    for start in range(0, count, CHUNK):
        with transaction.atomic():
            runs = FlowRun.objects.bulk_create([
                FlowRun(workspace_id=flow.workspace_id, flow=flow, state=State.COMPLETED, name=f"r{start + i}",
                        scheduled_start=ended, start_time=ended, end_time=ended, state_changed=ended)
                for i in range(min(CHUNK, count - start))])
            task_runs = TaskRun.objects.bulk_create([
                TaskRun(flow_run=run, task_key=f"t{j}", state=State.COMPLETED) for run in runs for j in range(tasks)])
            StateChange.objects.bulk_create(
                [StateChange(flow_run=run, to_state=State.COMPLETED, actor=Actor.AGENT, timestamp=ended)
                 for run in runs]
                + [StateChange(flow_run_id=t.flow_run_id, task_run=t, to_state=State.COMPLETED, actor=Actor.AGENT,
                               timestamp=ended) for t in task_runs])
            Log.objects.bulk_create([Log(workspace_id=flow.workspace_id, flow_run_id=t.flow_run_id, task_run=t,
                                         message=f"line {k}", timestamp=ended)
                                     for t in task_runs for k in range(logs)])


# Columns that hold a run's or task run's id (or a log line's ingest id): a copy gets new ones,
# derived from the old id and the copy's number, so that children follow their parents.
_RENUMBERED = {"id", "flow_run_id", "task_run_id", "parent_task_run_id", "ingest_id"}


def replicate(template, copies, per_statement=20):
    """`copies` copies of the runs `template` (ids) with their task runs, history and logs, in SQL,
    `per_statement` copies per statement and transaction."""
    for first in range(1, copies + 1, per_statement):
        last = min(copies, first + per_statement - 1)
        with transaction.atomic(), connection.cursor() as cursor:
            for model in (FlowRun, TaskRun, StateChange, Log):  # parents first; the FKs are checked at commit
                columns, values = [], []
                for field in model._meta.concrete_fields:
                    if field.primary_key and field.get_internal_type() in ("AutoField", "BigAutoField"):
                        continue  # the sequence numbers the copies
                    columns.append(field.column)
                    values.append(f"md5({field.column}::text || '-' || g)::uuid" if field.column in _RENUMBERED
                                  else field.column)
                key = "id" if model is FlowRun else "flow_run_id"
                cursor.execute(f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
                               f"SELECT {', '.join(values)} FROM {model._meta.db_table} "
                               f"CROSS JOIN generate_series(%s, %s) AS g WHERE {key} = ANY(%s)",
                               [first, last, template])


def raw_delete(workspace_id):
    """The raw limit: one DELETE per table, children first, in one transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        runs = f"SELECT id FROM {FlowRun._meta.db_table} WHERE workspace_id = %s"
        for model in (Log, StateChange, TaskRun):
            cursor.execute(f"DELETE FROM {model._meta.db_table} WHERE flow_run_id IN ({runs})", [workspace_id])
        cursor.execute(f"DELETE FROM {FlowRun._meta.db_table} WHERE workspace_id = %s", [workspace_id])


def bench_retention(table):
    count = int(os.environ.get("BENCH_RETENTION_RUNS", "20000"))
    empty_run_tables()
    account = Account.objects.create(name="Bench", slug="bench-lifecycle")
    ws = Workspace.objects.create(account=account, name="Retention", slug="retention", run_retention_days=30)
    flow = Flow.objects.create(workspace=ws, name="expired")
    ended = NOW - timedelta(days=31)

    load_runs(flow, count, ended=ended)
    started = time.perf_counter()
    raw_delete(ws.pk)
    raw_seconds = time.perf_counter() - started
    assert not FlowRun.objects.filter(workspace=ws).exists()

    load_runs(flow, count, ended=ended)
    passes, deleted = 0, 0
    started = time.perf_counter()
    while deleted < count:
        deleted += retention.run_once(NOW)["runs_deleted"]
        passes += 1
    seconds = time.perf_counter() - started
    assert not TaskRun.objects.exists() and not Log.objects.exists()
    size, batches = settings.ORCHESTRATOR["RETENTION_BATCH_SIZE"], settings.ORCHESTRATOR["RETENTION_MAX_BATCHES"]
    table.add(f"retention: {count:,} expired runs (+1 task run, 2 history, 2 logs each), {passes} pass(es) of "
              f"≤ {size * batches:,} runs", f"{count / seconds:,.0f} runs/s ({seconds:.2f} s)",
              f"raw DELETE {count / raw_seconds:,.0f} runs/s ({raw_seconds:.2f} s)", f"{raw_seconds / seconds:.2f}",
              "bounded passes; ratio shown")


def bench_background_deletion(table):
    count = int(os.environ.get("BENCH_DELETION_RUNS", "100000"))
    empty_run_tables()
    ws = factories.workspace()
    flow = factories.flow(ws, name="huge")
    factories.schedule(flow)
    load_runs(flow, count, ended=NOW, tasks=0, logs=0)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.api_key(ws, role=Role.ADMIN)[1]}")
    prefix = f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}"
    for _ in range(3):
        client.get(f"{prefix}/ping")  # warm: the key's cache, the URL resolver
    started = time.perf_counter()
    assert client.get(f"{prefix}/ping").status_code in (200, 204)
    ping_seconds = time.perf_counter() - started
    started = time.perf_counter()
    answer = client.delete(f"{prefix}/flows/{flow.pk}/")
    request_seconds = time.perf_counter() - started
    assert answer.status_code == 202, answer.content
    table.add(f"background deletion: DELETE of a flow with {count:,} runs (request)", f"{request_seconds * 1000:.0f} ms",
              f"ping {ping_seconds * 1000:.1f} ms", f"{request_seconds / ping_seconds:.1f}×", "< 1 s")
    job = answer.json()
    holder = deletion.DeletionJob.objects.get(pk=job["id"]).holder
    started = time.perf_counter()
    done = deletion.run_job(job["id"], holder)
    job_seconds = time.perf_counter() - started
    assert done.state == "DONE" and done.runs_deleted == count, done
    table.add(f"background deletion: the job, {count:,} runs in batches of "
              f"{settings.ORCHESTRATOR['DELETION_BATCH_SIZE']:,}", f"{count / job_seconds:,.0f} runs/s "
              f"({job_seconds:.2f} s)", "", "", "progress visible per batch")


def run(table):
    bench_retention(table)
    bench_background_deletion(table)
