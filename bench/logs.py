"""A log flood beside state changes, over HTTP: do agents writing logs slow the orchestration down?

Starts gunicorn as production runs it (bench/http.py's Server: `-w 2 -k gthread --threads 8`, DEBUG
off, the bench's throw-away PostgreSQL database and REDIS_URL) and drives state transitions (an
operator's `set_state` to FAILED on RUNNING runs, BENCH_HTTP_CLIENTS client threads) twice: alone,
and while agent threads post log batches of BENCH_LOG_BATCH lines (500, the agent's own batch) at
BENCH_LOG_LINES_PER_SECOND in all (default 10,000, the issue's figure), each batch with its run's
report token. The log persister runs meanwhile in this process, once a second, as the Celery worker
would (services/log_persister.py).

Phases alternate (quiet, flood, flood, quiet) so that drift on a shared machine hits both alike.
The row compares the p50 of a transition with and without the flood (aim: within 20 %), and says
what the flood really was: lines the API accepted per second, and lines the persister stored.
BENCH_LOG_TRANSITIONS (default 1,000 per phase) sets the size.

A second row: the log persister alone over BENCH_LOG_PERSIST_LINES (default 100,000) lines waiting in
the stream, beside a raw `COPY` of the same rows into a table like the logs table (its indexes, the
trigram one included). PostgreSQL and Redis only.
"""

import os
import statistics
import threading
import time
import uuid
from datetime import timedelta

import requests
from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from runs.logs import ingest
from runs.models import Account, ApiKey, Flow, FlowRun, Log, Role, State, WorkQueue, Workspace
from runs.run_tokens import token_of

from .http import CLIENTS, Server, cpu_seconds

TRANSITIONS = int(os.environ.get("BENCH_LOG_TRANSITIONS", "1000"))
LINES_PER_SECOND = int(os.environ.get("BENCH_LOG_LINES_PER_SECOND", "10000"))
BATCH = int(os.environ.get("BENCH_LOG_BATCH", "500"))
WRITERS = int(os.environ.get("BENCH_LOG_WRITERS", "4"))
PERSIST_LINES = int(os.environ.get("BENCH_LOG_PERSIST_LINES", "100000"))
COPY_COLUMNS = 'ingest_id, workspace_id, flow_run_id, task_run_id, level, message, "timestamp", source'


class Flood:
    """WRITERS threads posting log batches, paced to LINES_PER_SECOND in all, until stopped; and the
    log persister's passes, once a second."""

    def __init__(self, base, runs):
        self.base, self.runs = base, runs
        self.stop_event = threading.Event()
        self.accepted, self.failures, self.stored, self.persister_cpu = 0, [], 0, 0.0
        self.lock = threading.Lock()
        self.threads = []

    def _writer(self, n):
        session = requests.Session()
        run, token = self.runs[n % len(self.runs)]
        headers = {"Authorization": f"Bearer {token}"}
        every = BATCH * WRITERS / LINES_PER_SECOND  # seconds between this writer's batches
        next_at = time.monotonic() + n * every / WRITERS
        i = 0
        while not self.stop_event.is_set():
            pause = next_at - time.monotonic()
            if pause > 0:
                self.stop_event.wait(pause)
                if self.stop_event.is_set():
                    break
            next_at += every
            lines = [{"flow_run_id": str(run), "level": 20,
                      "message": f"writer {n} batch {i} line {j}: processed 1,000 rows of partition {j % 64}"}
                     for j in range(BATCH)]
            answer = session.post(f"{self.base}/agent/logs", json={"logs": lines}, headers=headers)
            if answer.status_code == 201:
                with self.lock:
                    self.accepted += BATCH
            else:
                self.failures.append((answer.status_code, answer.text[:200]))
            i += 1

    def _persister(self):
        from services import log_persister

        try:
            while not self.stop_event.is_set():
                began, cpu = time.monotonic(), time.thread_time()
                self.stored += log_persister.run_once()["stored"]
                self.persister_cpu += time.thread_time() - cpu
                self.stop_event.wait(max(0.0, 1.0 - (time.monotonic() - began)))
            self.stored += log_persister.run_once()["stored"]
        finally:
            connections.close_all()

    def start(self):
        self.stop_event.clear()
        self.began = time.monotonic()
        self.threads = [threading.Thread(target=self._writer, args=(n,)) for n in range(WRITERS)]
        self.threads.append(threading.Thread(target=self._persister))
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stop_event.set()
        for thread in self.threads:
            thread.join()
        return time.monotonic() - self.began


def _transitions(base, runs, headers):
    """Each run of `runs` set to FAILED by CLIENTS threads; returns the latencies (ms)."""
    timings, failures, lock = [], [], threading.Lock()
    share = [runs[i::CLIENTS] for i in range(CLIENTS)]

    def loop(mine):
        session, mine_times = requests.Session(), []
        for run in mine:
            began = time.perf_counter()
            answer = session.post(f"{base}/flow_runs/{run}/set_state/", json={"state": "FAILED"}, headers=headers)
            mine_times.append((time.perf_counter() - began) * 1000)
            if answer.status_code != 200:
                failures.append((answer.status_code, answer.text[:200]))
        with lock:
            timings.extend(mine_times)

    threads = [threading.Thread(target=loop, args=(part,)) for part in share]
    began = time.perf_counter()
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} transitions failed, e.g. {failures[0]}")
    return timings, elapsed


def run(table):
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        print("  logs beside transitions: PostgreSQL and Redis only (set DATABASE_URL and REDIS_URL)", flush=True)
        return
    # The bench's own stream: never a running server's.
    settings.ORCHESTRATOR["LOG_STREAM_KEY"] = os.environ["ORCHESTRATOR_LOG_STREAM_KEY"] = \
        f"orchestrator:bench-logs:{uuid.uuid4().hex}"
    account = Account.objects.create(name="Bench logs", slug=f"bench-logs-{uuid.uuid4().hex[:6]}")
    ws = Workspace.objects.create(account=account, name="Bench", slug="bench")
    queue = WorkQueue.objects.create(workspace=ws, name="default")
    flow = Flow.objects.create(workspace=ws, name="nightly")
    flow.register_version(entrypoint="bench:noop")
    _, operator = ApiKey.issue(workspace=ws, name="bench-operator", role=Role.OPERATOR)
    now = timezone.now()
    FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, work_queue=queue, name=f"t-{i}", state=State.RUNNING,
                                         scheduled_start=now - timedelta(hours=1), start_time=now)
                                 for i in range(4 * TRANSITIONS + 200)])
    to_change = list(FlowRun.objects.filter(workspace=ws, name__startswith="t-").values_list("pk", flat=True))
    writers = FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, work_queue=queue, name=f"w-{i}",
                                                   state=State.RUNNING, scheduled_start=now, start_time=now)
                                           for i in range(WRITERS)])
    log_runs = [(run_.pk, token_of(FlowRun.objects.get(pk=run_.pk))) for run_ in writers]
    headers = {"Authorization": f"Bearer {operator}"}
    prefix = f"/api/accounts/{account.slug}/workspaces/{ws.slug}"

    server = Server()
    try:
        base = server.url + prefix
        _transitions(base, to_change[:200], headers)  # warm-up
        chunks = [to_change[200 + i * TRANSITIONS:200 + (i + 1) * TRANSITIONS] for i in range(4)]
        quiet, flooded, flood_seconds = [], [], 0.0
        flood = Flood(base, log_runs)
        accepted_before = 0
        for chunk, with_logs in zip(chunks, (False, True, True, False)):
            if not with_logs:
                quiet += _transitions(base, chunk, headers)[0]
                continue
            flood.start()
            time.sleep(2)  # the flood at full rate, the persister busy, before timing
            accepted_before = flood.accepted
            started = time.monotonic()
            flooded += _transitions(base, chunk, headers)[0]
            during = time.monotonic() - started
            flood_seconds += during
            flood.accepted_during = getattr(flood, "accepted_during", 0) + flood.accepted - accepted_before
            flood.stop()
        # The flood alone: what its lines cost the web server's CPU and the persister's (Python side;
        # PostgreSQL's share is not counted: its processes also serve whatever else runs here).
        alone = Flood(base, log_runs)
        cpu_before = cpu_seconds(server.process.pid)
        alone.start()
        time.sleep(10)
        seconds = alone.stop()
        server_cpu = cpu_seconds(server.process.pid) - cpu_before
        if flood.failures or alone.failures:
            raise RuntimeError(f"log batches failed, e.g. {(flood.failures + alone.failures)[0]}")
    finally:
        server.stop()
    accepted_rate = flood.accepted_during / flood_seconds
    p50_quiet, p50_flood = statistics.median(quiet), statistics.median(flooded)
    p99 = lambda values: sorted(values)[int(len(values) * 0.99)]  # noqa: E731
    table.add(f"state transitions over HTTP while agents write {LINES_PER_SECOND:,} log lines/s "
              f"({len(flooded):,} transitions, {CLIENTS} clients)",
              f"p50 {p50_flood:.1f} / p99 {p99(flooded):.1f} ms; logs accepted meanwhile {accepted_rate:,.0f} "
              f"lines/s",
              f"no logs: p50 {p50_quiet:.1f} / p99 {p99(quiet):.1f} ms",
              f"{p50_flood / p50_quiet:.2f}", "≤ 1.20")
    table.add(f"log flood alone, {WRITERS} agents posting {BATCH}-line batches for {seconds:.0f} s",
              f"{alone.accepted / seconds:,.0f} lines/s accepted; web server CPU "
              f"{server_cpu * 1000 / max(alone.accepted, 1) * 1000:.0f} ms per 1,000 lines, log persister "
              f"{alone.persister_cpu * 1000 / max(alone.stored, 1) * 1000:.0f} ms per 1,000 lines (Python side)")
    stored = Log.objects.filter(workspace=ws).count()
    assert stored == flood.accepted + alone.accepted, f"accepted {flood.accepted + alone.accepted} lines, stored {stored}"
    bench_persister(table, ws, writers[0])


def bench_persister(table, ws, run_):
    from services import log_persister

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE runs_log")
    now = timezone.now()
    rows = []
    for start in range(0, PERSIST_LINES, 1000):
        count = min(1000, PERSIST_LINES - start)
        ids = ingest.ingest_ids(count)
        rows += [ingest.row(ids[i], ws.pk, run_.pk, None, 20, f"line {start + i}: processed 1,000 rows of partition "
                            f"{i % 64}", now) for i in range(count)]
    for start in range(0, len(rows), 1000):
        assert ingest.accept(rows[start:start + 1000]) == "redis"
    began = time.perf_counter()
    while ingest.stream_length():
        log_persister.run_once()
    persisted = time.perf_counter() - began
    assert Log.objects.count() == PERSIST_LINES
    values = [[r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]] for r in rows]
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_logs_copy")
        cursor.execute("CREATE TABLE bench_logs_copy (LIKE runs_log INCLUDING ALL)")
        began = time.perf_counter()
        with cursor.cursor.copy(f"COPY bench_logs_copy ({COPY_COLUMNS}) FROM STDIN") as copy:
            for value in values:
                copy.write_row(value)
        copied = time.perf_counter() - began
        cursor.execute("DROP TABLE bench_logs_copy")
    table.add(f"log persister, {PERSIST_LINES:,} lines from the Redis stream (COPY, dedup, trigram index)",
              f"{PERSIST_LINES / persisted:,.0f} lines/s ({persisted:.2f} s)",
              f"raw COPY of the same rows into a table like runs_log {PERSIST_LINES / copied:,.0f} rows/s",
              f"{copied / persisted:.2f}", "")
