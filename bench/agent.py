"""Agent endpoints: poll-and-claim latency over a big runs table, and heartbeat ingestion.

Each figure sits beside a do-nothing authenticated endpoint (`agent/ping`) measured in the same
run, the same way, so the ratio says what the endpoint itself costs. The poll and claim go through
Django's test client; heartbeat ingestion calls the production WSGI application
(orchestrator/wsgi.py) with the environ a WSGI server hands it, so that the client's own request
building is not counted as the server's (the HTTP bench, bench/http.py, measures over the wire).
`BENCH_AGENT_ROWS` sets how many runs fill the table first (default 1,000,000).
"""

import io
import os
import statistics
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from runs.models import Account, Agent, ApiKey, Flow, FlowRun, Role, Schedule, WorkQueue, Workspace
from runs.run_tokens import token_of

CLIENTS = 16
HEARTBEAT_SECONDS = 3.0


def _fill(workspace, flow, queue, rows):
    """Bulk-insert `rows` finished runs (and a few future ones) in one statement."""
    now = timezone.now()
    columns = ("id, workspace_id, flow_id, work_queue_id, schedule_slug, name, parameters, state, state_message, "
               "state_changed, scheduled_start, auto_scheduled, run_count, lazarus_count, created, updated")
    if connection.vendor == "postgresql":
        sql = f"""INSERT INTO runs_flowrun ({columns})
            SELECT gen_random_uuid(), %s, %s, %s, '', 'bench-' || g, '{{}}',
                   CASE WHEN g %% 100 = 0 THEN 'SCHEDULED' ELSE 'COMPLETED' END, '',
                   %s, %s + (CASE WHEN g %% 100 = 0 THEN interval '1 day' ELSE interval '-1 day' END)
                       + g * interval '1 millisecond',
                   false, 0, 0, %s, %s
            FROM generate_series(1, %s) AS g"""
        params = [workspace.pk, flow.pk, queue.pk, now, now, now, now, rows]
    else:
        sql = f"""WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < %s)
            INSERT INTO runs_flowrun ({columns})
            SELECT lower(hex(randomblob(16))), %s, %s, %s, '', 'bench-' || x, '{{}}',
                   CASE WHEN x %% 100 = 0 THEN 'SCHEDULED' ELSE 'COMPLETED' END, '',
                   %s, CASE WHEN x %% 100 = 0 THEN %s ELSE %s END, 0, 0, 0, %s, %s FROM g"""
        params = [rows, workspace.pk, flow.pk, queue.pk, now, now + timedelta(days=1), now - timedelta(days=1),
                  now, now]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE runs_flowrun")


def _timed(call, count):
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answer = call()
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code < 300, answer.content
    return times


class _Answer:
    def __init__(self, status, content):
        self.status_code, self.content = status, content


def _wsgi_caller(method, path, token):
    """A call of the production WSGI application, as a WSGI server makes it (a fresh environ with the
    headers `requests` sends, over TLS so that a production SSL redirect lets it through)."""
    from orchestrator.wsgi import application

    host = next((h.lstrip(".") for h in settings.ALLOWED_HOSTS if h != "*"), "127.0.0.1")
    base = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SCRIPT_NAME": "",
            "SERVER_NAME": host, "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": host,
            "HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_ACCEPT": "*/*", "HTTP_USER_AGENT": "bench",
            "HTTP_ACCEPT_ENCODING": "gzip, deflate", "HTTP_CONNECTION": "keep-alive", "CONTENT_LENGTH": "0",
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "wsgi.url_scheme": "https",
            "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False}

    def call():
        started = []
        result = application({**base, "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO()},
                             lambda status, headers, exc_info=None: started.append(status))
        try:
            content = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        return _Answer(int(started[0][:3]), content)

    return call


def _p(times, q):
    return statistics.quantiles(times, n=100)[q - 1]


def _rate(make_call, seconds):
    """Requests/s of CLIENTS threads, each with its own client and database connection."""
    done = [0] * CLIENTS
    stop = threading.Event()
    ready = threading.Barrier(CLIENTS + 1)

    def work(i):
        call = make_call()
        ready.wait()
        try:
            while not stop.is_set():
                assert call().status_code < 300
                done[i] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def run(table):
    rows = int(os.environ.get("BENCH_AGENT_ROWS", 1_000_000))
    account = Account.objects.create(name="Bench agent", slug="bench-agent")
    workspace = Workspace.objects.create(account=account, name="Bench", slug="bench")
    queue = WorkQueue.objects.create(workspace=workspace, name="bench")
    flow = Flow.objects.create(workspace=workspace, name="bench-flow")
    flow.register_version(entrypoint="agent.examples.hello:hello")
    agent = Agent.objects.create(workspace=workspace, name="bench-agent")
    agent.queues.set([queue])
    _, secret = ApiKey.issue(workspace=workspace, name="bench", role=Role.AGENT)
    prefix = f"/api/accounts/{account.slug}/workspaces/{workspace.slug}/agent"

    started = time.perf_counter()
    _fill(workspace, flow, queue, rows)
    print(f"  filled {rows:,} runs in {time.perf_counter() - started:.1f} s", flush=True)

    def client():
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return c

    api = client()
    ping = lambda: api.get(f"{prefix}/ping")  # noqa: E731
    poll = lambda: api.post(f"{prefix}/claim", {"agent_id": agent.pk, "max_runs": 10}, format="json")  # noqa: E731
    _timed(ping, 20), _timed(poll, 20)  # warm up connections and caches
    polls, pings = [], []
    for _ in range(10):  # interleaved, so drift on a shared machine hits both alike
        polls += _timed(poll, 30)
        pings += _timed(ping, 30)
    table.add(f"agent poll, nothing due, {rows:,} runs in table (p50 / p99)",
              f"{_p(polls, 50):.1f} / {_p(polls, 99):.1f} ms", f"ping {_p(pings, 50):.1f} / {_p(pings, 99):.1f} ms",
              f"{_p(polls, 99) / _p(pings, 99):.1f}x", "p99 < 10 ms")

    claims, pings = [], []
    # Runs of schedules, half following the latest version and half pinned, so the claim decides
    # each run's version as it does in production (runs/versions.py).
    following = Schedule.objects.create(flow=flow, slug="following", interval_seconds=3600, status="PAUSED")
    pinned = Schedule.objects.create(flow=flow, slug="pinned", interval_seconds=3600, status="PAUSED",
                                     flow_version=flow.latest_version)
    for _ in range(10):
        now = timezone.now()
        FlowRun.objects.bulk_create([
            FlowRun(workspace=workspace, flow=flow, work_queue=queue, name=f"due-{i}",
                    schedule=following if i % 2 else pinned, scheduled_start=now - timedelta(seconds=i))
            for i in range(200)
        ])
        claim = lambda: api.post(f"{prefix}/claim", {"agent_id": agent.pk, "max_runs": 200}, format="json")  # noqa: E731
        started = time.perf_counter()
        answer = claim()
        claims.append((time.perf_counter() - started) * 1000)
        assert len(answer.json()["runs"]) == 200
        # Started, as the agent would: a claim hands out again runs its agent has not started.
        FlowRun.objects.filter(pk__in=[r["id"] for r in answer.json()["runs"]]).update(state="RUNNING")
        pings += _timed(ping, 10)
    table.add("claim 200 due runs (p50 / p99)", f"{_p(claims, 50):.1f} / {max(claims):.1f} ms",
              f"ping {_p(pings, 50):.1f} / {_p(pings, 99):.1f} ms", f"{max(claims) / _p(pings, 99):.1f}x",
              "p99 < 50 ms")

    running = list(FlowRun.objects.filter(workspace=workspace, state="RUNNING")[:CLIENTS])

    def beat_client():
        # As a runner beats: with its run's report token, which the claim handed out.
        run = running[threading.get_ident() % len(running)]
        beat = _wsgi_caller("POST", f"{prefix}/flow_runs/{run.pk}/heartbeat", token_of(run))
        answer = beat()
        assert answer.status_code == 200, answer.content
        return beat

    def ping_client():
        return _wsgi_caller("GET", f"{prefix}/ping", secret)

    beats = _rate(beat_client, HEARTBEAT_SECONDS)
    pings_per_s = _rate(ping_client, HEARTBEAT_SECONDS)
    table.add(f"flow-run heartbeats, {CLIENTS} clients", f"{beats:,.0f} /s", f"ping {pings_per_s:,.0f} /s",
              f"{beats / pings_per_s:.2f}x", ">= 2,000 /s")
