"""Dashboard pages: server time with many runs in the database beside the same page empty.

Each page is fetched through Django's test Client as a logged-in workspace admin (the whole
stack: middleware, session, queries, template); the figures are the median and the p99 of
FETCHES fetches (with 20 fetches the p99 is the slowest but one). The aim (issue 15): every
page's p99 within 5× of the same page with no runs. BENCH_DASHBOARD_RUNS sets the number of runs
(default 100,000; the issue's 1,000,000 takes some minutes to seed).
"""

import os
import statistics
import time
from datetime import timedelta

from django.test import Client
from django.utils import timezone

RUNS = int(os.environ.get("BENCH_DASHBOARD_RUNS", "100000"))
FETCHES = 20
SPREAD_DAYS = 30


def forget_captured_contexts():
    """Drop what the test client captured of the last fetch. Under DEBUG, Signal.connect checks
    each receiver's signature through an lru_cache (django.utils.inspect, 512 entries), and the
    test client connects a fresh receiver per request that holds the request's rendered contexts:
    the cache kept the last 512 pages' runs alive, and the garbage collector's full passes over
    them (50-150 ms) landed in the p99 of whichever pages came later. A web process has no test
    client, so this is the harness's cost, not the page's."""
    from django.utils.inspect import _get_func_parameters

    _get_func_parameters.cache_clear()


def timings_ms(client, url):
    """(median, p99) in ms of FETCHES fetches of `url`, after one warm-up fetch."""
    client.get(url)  # warm: template loading, first-query caches
    forget_captured_contexts()
    times = []
    for _ in range(FETCHES):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
        del response
        forget_captured_contexts()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def seed(ws, flows, queues, schedule, now):
    """RUNS runs spread over the last SPREAD_DAYS days, mostly finished, some running or late, with
    recovery logs and state changes; returns one run with history, task runs and logs."""
    from runs.models import Actor, FlowRun, Log, State, StateChange, TaskRun

    states = [State.COMPLETED] * 90 + [State.FAILED] * 4 + [State.CRASHED, State.CANCELLED, State.RUNNING,
                                                           State.LATE, State.SUBMITTED, State.SCHEDULED]
    step = SPREAD_DAYS * 86400 / RUNS
    batch = []
    for i in range(RUNS):
        start = now - timedelta(seconds=i * step + 60)
        state = states[i % len(states)]
        started = state not in (State.LATE, State.SCHEDULED)
        batch.append(FlowRun(
            workspace=ws, flow=flows[i % len(flows)], work_queue=queues[i % len(queues)], state=state,
            name=f"bench-{i}", scheduled_start=start, start_time=start if started else None,
            end_time=start + timedelta(seconds=50) if state in (State.COMPLETED, State.FAILED, State.CRASHED,
                                                              State.CANCELLED) else None,
            last_heartbeat=now - timedelta(seconds=i % 900) if state == State.RUNNING else None,
            schedule=schedule if i % 10 == 0 else None, created=start,
        ))
        if len(batch) == 5000:
            FlowRun.objects.bulk_create(batch)
            batch = []
    FlowRun.objects.bulk_create(batch)
    crashed = list(FlowRun.objects.filter(workspace=ws, state=State.CRASHED).order_by("-scheduled_start")[:2000])
    Log.objects.bulk_create([Log(workspace=ws, flow_run=r, source="lazarus", message="rescheduled",
                                 timestamp=r.scheduled_start) for r in crashed], batch_size=2000)
    StateChange.objects.bulk_create([StateChange(flow_run=r, from_state=State.RUNNING, to_state=State.CRASHED,
                                                 actor=Actor.ZOMBIE_KILLER, timestamp=r.scheduled_start)
                                     for r in crashed], batch_size=2000)
    run = FlowRun.objects.filter(workspace=ws, state=State.RUNNING).order_by("-scheduled_start").first()
    TaskRun.objects.bulk_create([TaskRun(flow_run=run, task_key=f"task-{i}", state=State.COMPLETED,
                                         start_time=run.start_time, end_time=now) for i in range(200)])
    Log.objects.bulk_create([Log(workspace=ws, flow_run=run, message=f"line {i}", timestamp=now)
                             for i in range(2000)])
    return run


def settle(tables):
    """VACUUM ANALYZE the seeded tables, as autovacuum does in production a while after a bulk
    insert: without statistics the planner guesses at a million fresh rows, and without the
    visibility map no index-only scan (the pages' counts) skips the table."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}" if connection.vendor == "postgresql" else f"ANALYZE {table}")


def run(table):
    from runs.models import Role
    from runs.scheduling import create_manual_run
    from tests import factories

    now = timezone.now()
    ws = factories.workspace()
    client = Client()
    client.force_login(factories.member(ws, role=Role.ADMIN))
    flows = [factories.flow(ws) for _ in range(20)]
    queues = [factories.work_queue(ws) for _ in range(5)]
    agent = factories.agent(ws)
    schedule = factories.schedule(flows[0])
    empty_run, _ = create_manual_run(flows[0])
    pages = {
        "overview": "/dashboard/", "runs list": "/dashboard/runs/",
        "runs FAILED of a flow": f"/dashboard/runs/?state=FAILED&flow={flows[1].pk}",
        "runs text search": "/dashboard/runs/?q=bench-4242",
        "timeline 15 min": "/dashboard/timeline/?window=15", "timeline 6 h": "/dashboard/timeline/?window=360",
        "timeline 7 d by queue": "/dashboard/timeline/?window=10080&group=queue", "run detail": None,
        "schedules": "/dashboard/schedules/", "new schedule form": "/dashboard/schedules/new/",
        "agents & queues": "/dashboard/agents/", "agent page": f"/dashboard/agents/{agent.pk}/",
        "recovery review 30 d": "/dashboard/recovery/?period=720",
    }
    empty = {name: timings_ms(client, url or f"/dashboard/runs/{empty_run.pk}/") for name, url in pages.items()}
    started = time.perf_counter()
    busy_run = seed(ws, flows, queues, schedule, now)
    from runs.models import FlowRun

    FlowRun.objects.filter(workspace=ws, name__endswith="7").update(agent=agent)  # a tenth of the runs: one agent's
    settle(["runs_flowrun", "runs_log", "runs_statechange", "runs_taskrun"])
    print(f"  seeded {RUNS:,} runs in {time.perf_counter() - started:.1f} s", flush=True)
    for name, url in pages.items():
        median, p99 = timings_ms(client, url or f"/dashboard/runs/{busy_run.pk}/")
        table.add(f"dashboard {name}, {RUNS:,} runs (p99 of {FETCHES}; median {median:.0f} ms)", f"{p99:.1f} ms",
                  f"{empty[name][1]:.1f} ms empty", f"{p99 / empty[name][1]:.1f}×", "≤ 5× empty")
