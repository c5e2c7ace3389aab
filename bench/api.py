"""The REST API: list-runs latency over a big table beside a do-nothing endpoint, run creation and
state transitions with 16 concurrent clients.

BENCH_API_RUNS sets the table size (default 1,000,000); BENCH_API_REQUESTS the requests per
latency figure. Requests go through Django's full WSGI stack in process (no sockets), so the
figures are the server's own cost, not a network's.
"""

import os
import statistics
import threading
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from runs.models import Account, ApiKey, Flow, FlowRun, Role, State, WorkQueue, Workspace

RUNS = int(os.environ.get("BENCH_API_RUNS", "1000000"))
REQUESTS = int(os.environ.get("BENCH_API_REQUESTS", "300"))
CLIENTS = 16
STATES = [State.COMPLETED, State.COMPLETED, State.COMPLETED, State.FAILED, State.SCHEDULED, State.CANCELLED]


def load_runs(flow, queue, count, now):
    """`count` runs spread over the last 365 days, in one statement on PostgreSQL, batches elsewhere."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO runs_flowrun (id, workspace_id, flow_id, work_queue_id, schedule_slug, name, parameters,
                    state, state_message, state_changed, scheduled_start, auto_scheduled, run_count, lazarus_count,
                    created, updated)
                SELECT gen_random_uuid(), %s, %s, %s, 'hourly', '', '{}',
                    (ARRAY['COMPLETED','COMPLETED','COMPLETED','FAILED','SCHEDULED','CANCELLED'])[1 + i %% 6],
                    '', %s, %s - make_interval(secs => i * 31536000.0 / %s), true, 0, 0,
                    %s - make_interval(secs => i * 31536000.0 / %s), %s
                FROM generate_series(1, %s) AS i
                """,
                [flow.workspace_id, flow.pk, queue.pk, now, now, count, now, count, now, count],
            )
            cursor.execute("ANALYZE runs_flowrun")
        return
    step = timedelta(seconds=365 * 86400 / count)
    batch = []
    for i in range(1, count + 1):
        start = now - step * i
        batch.append(FlowRun(workspace_id=flow.workspace_id, flow=flow, work_queue=queue, schedule_slug="hourly",
                             state=STATES[i % 6], state_changed=now, scheduled_start=start, auto_scheduled=True,
                             created=start))
        if len(batch) == 20000:
            FlowRun.objects.bulk_create(batch)
            batch = []
    FlowRun.objects.bulk_create(batch)


def latencies(client, path, params, count):
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path, params)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content[:300]
    return timings


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def concurrent(secret, work, per_client):
    """Run `work(client, i, j)` from 16 threads; returns (operations/s, p99 ms)."""
    timings, lock, barrier = [], threading.Lock(), threading.Barrier(CLIENTS)

    def client_loop(i):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        barrier.wait()
        mine = []
        for j in range(per_client):
            started = time.perf_counter()
            work(client, i, j)
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            timings.extend(mine)
        connection.close()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    elapsed = time.perf_counter() - started
    return len(timings) / elapsed, percentile(timings, 0.99)


def run(table):
    settings.ORCHESTRATOR["THROTTLE_EXPENSIVE_RATE"] = ""  # measure the endpoint, not the limiter
    now = timezone.now()
    account = Account.objects.create(name="Bench", slug=f"bench-{uuid.uuid4().hex[:6]}")
    ws = Workspace.objects.create(account=account, name="Bench", slug="bench")
    queue = WorkQueue.objects.create(workspace=ws, name="default")
    flow = Flow.objects.create(workspace=ws, name="nightly")
    flow.register_version(entrypoint="bench:noop")
    started = time.perf_counter()
    load_runs(flow, queue, RUNS, now)
    print(f"  loaded {RUNS:,} runs in {time.perf_counter() - started:.1f} s", flush=True)

    _, secret = ApiKey.issue(workspace=ws, name="bench", role=Role.OPERATOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    prefix = f"/api/accounts/{account.slug}/workspaces/{ws.slug}"
    window = {"state": "FAILED", "scheduled_after": (now - timedelta(days=30)).isoformat(),
              "scheduled_before": (now - timedelta(days=23)).isoformat(), "ordering": "-scheduled_start",
              "page_size": 50}
    latencies(client, f"{prefix}/flow_runs/", window, 10)  # warm caches and connections
    ping = latencies(client, f"{prefix}/ping", {}, REQUESTS)
    listing = latencies(client, f"{prefix}/flow_runs/", window, REQUESTS)
    p50, p99 = statistics.median(listing), percentile(listing, 0.99)
    b50, b99 = statistics.median(ping), percentile(ping, 0.99)
    table.add(f"list runs, {RUNS:,} in table, state+7-day window, 50/page: p50", f"{p50:.1f} ms",
              f"ping {b50:.1f} ms", f"{p50 / b50:.1f}×")
    table.add(f"list runs, {RUNS:,} in table, state+7-day window, 50/page: p99", f"{p99:.1f} ms",
              f"ping {b99:.1f} ms", f"{p99 / b99:.1f}×")

    if connection.vendor != "postgresql":
        # The throw-away SQLite test database is in memory and locks whole tables: 16 writers
        # measure the lock, not the API. These two figures are PostgreSQL's.
        print("  concurrent creation and transitions: PostgreSQL only (set DATABASE_URL)", flush=True)
        return
    per_client = max(5, REQUESTS // CLIENTS)
    rate, p99 = concurrent(secret, lambda c, i, j: c.post(
        f"{prefix}/flow_runs/", {"flow": flow.name, "idempotency_key": f"bench-{i}-{j}"}, format="json"), per_client)
    table.add(f"create a manual run over the API, {CLIENTS} clients", f"{rate:.0f} runs/s, p99 {p99:.0f} ms",
              aim="≥ 400 runs/s, p99 < 80 ms")

    ids = list(FlowRun.objects.filter(workspace=ws, auto_scheduled=False).values_list("pk", flat=True))
    rate, p99 = concurrent(secret, lambda c, i, j: c.post(
        f"{prefix}/flow_runs/{ids[i * per_client + j]}/set_state/", {"state": "FAILED"}, format="json"), per_client)
    table.add(f"state transitions over the API, {CLIENTS} clients", f"{rate:.0f} /s, p99 {p99:.0f} ms",
              aim="≥ 480 /s")
