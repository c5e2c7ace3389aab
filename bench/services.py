"""Recovery services: one pass of each over many runs, beside an indexed COUNT of the rows it acts on.

Sizes: BENCH_FLOW_RUNS (default 1,000,000) flow runs and BENCH_TASK_RUNS_PER_FLOW_RUN (default 5)
task runs each. The rows are bulk-loaded with generate_series (PostgreSQL only): most runs are
finished; a thousand are healthy and running; 500 each are zombies, stuck (Lazarus), overdue
(late), expired pauses, cancelled with a running task; 10,000 are scheduled in the future.
"""

import os
import time
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from services import registry
from tests import factories

AIM = "< 1 s"
SLICE = 500  # runs per recovery case


def _sizes():
    return int(os.environ.get("BENCH_FLOW_RUNS", 1_000_000)), int(os.environ.get("BENCH_TASK_RUNS_PER_FLOW_RUN", 5))


# Each flow run i gets its case from where i falls; %(...)s are query parameters.
FLOW_RUNS_SQL = """
INSERT INTO runs_flowrun (id, schedule_slug, name, parameters, state, state_message, state_changed,
    scheduled_start, auto_scheduled, start_time, last_heartbeat, heartbeat_interval, run_count, lazarus_count,
    pause_expires_at, created, updated, agent_id, flow_id, flow_version_id, workspace_id)
SELECT gen_random_uuid(), '', 'run-' || i, '{}'::jsonb, c.state, '', c.changed, c.due, false, c.started,
    c.beat, 30, 1, 0, c.pause, %(now)s, %(now)s, %(agent)s, %(flow)s, %(version)s, %(ws)s
FROM generate_series(1, %(n)s) AS i
CROSS JOIN LATERAL (SELECT
    CASE WHEN i <= 1000 THEN 'RUNNING' WHEN i <= 2000 THEN 'RUNNING' WHEN i <= 2500 THEN 'SCHEDULED'
         WHEN i <= 12500 THEN 'SCHEDULED' WHEN i <= 13000 THEN 'PAUSED' WHEN i <= 13500 THEN 'CANCELLED'
         ELSE 'COMPLETED' END AS state,
    CASE WHEN i <= 1000 THEN %(fresh)s WHEN i <= 1500 THEN %(stuck)s WHEN i <= 2000 THEN %(dead)s END AS beat,
    CASE WHEN i <= 2500 AND i > 2000 THEN %(overdue)s WHEN i <= 12500 AND i > 2500 THEN %(future)s
         ELSE %(day_ago)s END AS due,
    CASE WHEN i <= 2000 OR i > 12500 THEN %(day_ago)s END AS started,
    CASE WHEN i > 12500 AND i <= 13000 THEN %(overdue)s END AS pause,
    %(day_ago)s::timestamptz AS changed) AS c
"""

# Task j of each run: the last one is RUNNING (beating like its flow run) in healthy, zombie and
# cancelled runs; every other task run is COMPLETED.
TASK_RUNS_SQL = """
INSERT INTO runs_taskrun (id, task_key, dynamic_key, name, state, state_message, state_changed, run_count,
    max_retries, start_time, last_heartbeat, created, updated, flow_run_id)
SELECT gen_random_uuid(), 'task-' || j, '0', '', t.state, '', %(day_ago)s, 1, 0, %(day_ago)s,
    CASE WHEN t.state = 'RUNNING' THEN coalesce(fr.last_heartbeat, %(fresh)s) END, %(now)s, %(now)s, fr.id
FROM runs_flowrun fr CROSS JOIN generate_series(1, %(per_run)s) AS j
CROSS JOIN LATERAL (SELECT CASE
    WHEN j = %(per_run)s AND ((fr.state = 'RUNNING' AND fr.last_heartbeat <> %(stuck)s) OR fr.state = 'CANCELLED')
    THEN 'RUNNING' ELSE 'COMPLETED' END AS state) AS t
WHERE fr.workspace_id = %(ws)s
"""

# The rows each service acts on, counted through the indexes that serve it.
COUNTS = {
    "zombie-killer": "SELECT count(*) FROM runs_taskrun WHERE state = 'RUNNING' AND last_heartbeat < %(cutoff)s",
    "lazarus": "SELECT count(*) FROM runs_flowrun WHERE state IN ('SUBMITTED', 'RUNNING', 'CANCELLING', 'PAUSED') "
               "AND state = 'RUNNING' AND last_heartbeat < %(cutoff)s",
    "mark-late-runs": "SELECT count(*) FROM runs_flowrun WHERE state IN ('SCHEDULED', 'LATE') "
                      "AND state = 'SCHEDULED' AND scheduled_start < %(cutoff)s",
    "fail-expired-pauses": "SELECT count(*) FROM runs_flowrun WHERE state IN ('SUBMITTED', 'RUNNING', "
                           "'CANCELLING', 'PAUSED') AND state = 'PAUSED' AND pause_expires_at < %(now)s",
    "cancellation-cleanup": "SELECT count(*) FROM runs_flowrun WHERE state IN ('SUBMITTED', 'RUNNING', "
                            "'CANCELLING', 'PAUSED') AND state = 'CANCELLING'",
    "agent-monitor": "SELECT count(*) FROM runs_flowrun WHERE state IN ('SUBMITTED', 'RUNNING', 'CANCELLING', "
                     "'PAUSED') AND state = 'SUBMITTED'",
}


def _load(now, flow_runs, per_run):
    ws = factories.workspace()
    flow = factories.flow(ws)
    agent = factories.agent(ws, last_heartbeat=now, heartbeat_interval=30)
    params = {"now": now, "n": flow_runs, "per_run": per_run, "ws": ws.pk, "flow": flow.pk,
              "version": flow.latest_version.pk, "agent": agent.pk, "fresh": now - timedelta(seconds=5),
              "stuck": now - timedelta(minutes=20), "dead": now - timedelta(hours=2),
              "overdue": now - timedelta(minutes=5), "future": now + timedelta(hours=1),
              "day_ago": now - timedelta(days=1)}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(FLOW_RUNS_SQL, params)
        cursor.execute(TASK_RUNS_SQL, params)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runs_flowrun")
        cursor.execute("ANALYZE runs_taskrun")


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _count(name, now):
    cutoff = now - timedelta(seconds=60)
    with connection.cursor() as cursor:
        cursor.execute(COUNTS[name], {"cutoff": cutoff, "now": now})
        return cursor.fetchone()[0]


def run(table):
    if connection.vendor != "postgresql":
        table.add("recovery service passes", "needs PostgreSQL (DATABASE_URL)", aim=AIM)
        return
    flow_runs, per_run = _sizes()
    now = timezone.now()
    load_s, _ = _timed(lambda: _load(now, flow_runs, per_run))
    print(f"  loaded {flow_runs:,} flow runs and {flow_runs * per_run:,} task runs in {load_s:.1f} s", flush=True)
    size = f"{flow_runs:,} flow runs, {flow_runs * per_run:,} task runs"
    for name in ["agent-monitor", "zombie-killer", "lazarus", "mark-late-runs", "fail-expired-pauses",
                 "cancellation-cleanup"]:
        count_s, rows = _timed(lambda: _count(name, now))
        pass_s, summary = _timed(lambda: registry.get(name).run_once(now))
        idle_s, _ = _timed(lambda: registry.get(name).run_once(now))
        table.add(f"{name} pass over {size}", f"{pass_s * 1000:.0f} ms (then {idle_s * 1000:.0f} ms idle); {summary}",
                  f"indexed COUNT {count_s * 1000:.1f} ms ({rows} rows)", f"{pass_s / max(count_s, 1e-6):.0f}×", AIM)
