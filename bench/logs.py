"""A log flood beside state changes, over HTTP: do agents writing logs slow the orchestration down?

Starts gunicorn as production runs it (bench/http.py's Server: `-w 2 -k gthread --threads 8`, DEBUG
off, the bench's throw-away PostgreSQL database and REDIS_URL), the log persister in a process of
its own, once a second, as the Celery worker runs it (bench/_flood.py), and drives operator
`set_state` transitions (RUNNING -> FAILED) twice over:

- at a steady BENCH_LOG_STEADY_RATE transitions/s (default 30, about a quarter of what this server
  does flat out on 2 cores; requests sent on a fixed schedule from BENCH_HTTP_CLIENTS threads,
  whatever the answers' pace): the latency a user or agent sees while logs pour in. This is the
  issue's aim: within 20 % at p50.
- flat out (BENCH_HTTP_CLIENTS threads, each sending its next as soon as it has its answer): on a
  machine whose two cores run server, database, persister, agents and clients alike, what the flood
  costs in CPU is taken from the transitions, so this row shows the flood's price, not a lock.

Each both alone and while agents (a process apart, bench/_flood.py, one thread per run token) post
log batches of BENCH_LOG_BATCH lines (500, the agent's own batch) at BENCH_LOG_LINES_PER_SECOND in
all (default 10,000, the issue's figure). Phases alternate (quiet, flood, flood, quiet) so that drift
on a shared machine hits both alike; each row says what the flood really was (lines the API
accepted per second while the transitions were timed). BENCH_LOG_TRANSITIONS (default 1,000) per
phase.

Then the flood alone for 10 s: the CPU per 1,000 lines of the web server, the persister, PostgreSQL's
processes serving the bench's database and the agents' process. And the log persister alone over BENCH_LOG_PERSIST_LINES (default 100,000) lines
waiting in the stream, beside a raw `COPY` of the same rows into a table like the logs table (its
indexes, the trigram one included). PostgreSQL and Redis only.
"""

import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import requests
from django.conf import settings
from django.db import connection
from django.utils import timezone

from runs.logs import ingest
from runs.models import Account, ApiKey, Flow, FlowRun, Log, Role, State, WorkQueue, Workspace
from runs.run_tokens import token_of

from .http import CLIENTS, ROOT, Server, cpu_seconds, process_cpu_seconds, production_env

TRANSITIONS = int(os.environ.get("BENCH_LOG_TRANSITIONS", "1000"))
STEADY_RATE = float(os.environ.get("BENCH_LOG_STEADY_RATE", "30"))
LINES_PER_SECOND = int(os.environ.get("BENCH_LOG_LINES_PER_SECOND", "10000"))
BATCH = int(os.environ.get("BENCH_LOG_BATCH", "500"))
WRITERS = int(os.environ.get("BENCH_LOG_WRITERS", "4"))
PERSIST_LINES = int(os.environ.get("BENCH_LOG_PERSIST_LINES", "100000"))
COPY_COLUMNS = 'ingest_id, workspace_id, flow_run_id, task_run_id, level, message, "timestamp", source'


class Helper:
    """A bench/_flood.py process whose printed lines are gathered by a thread; stopped by closing its
    standard input (it then finishes what it does and exits)."""

    def __init__(self, *args):
        self.process = subprocess.Popen([sys.executable, "-m", "bench._flood", *args], cwd=ROOT, env=production_env(),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def cpu(self):
        return cpu_seconds(self.process.pid)

    def stop(self, timeout=120):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self.reader.join()
        if self.process.returncode:
            raise RuntimeError(f"bench._flood {self.process.args[3:4]} exited with {self.process.returncode}")

    def records(self, kind):
        return [line.split()[1:] for line in list(self.lines) if line.startswith(kind + " ")]


class Writers(Helper):
    def __init__(self, url, runs):
        super().__init__("writers", url, str(LINES_PER_SECOND), str(BATCH), *(f"{run}={token}" for run, token in runs))

    def accepted_between(self, start, end):
        return sum(int(lines) for moment, lines in self.records("accepted") if start <= float(moment) <= end)

    def accepted(self):
        return sum(int(lines) for _, lines in self.records("accepted"))

    def failures(self):
        return [line for line in self.lines if line.startswith("failed ")]


def database_cpu():
    """{backend pid: CPU seconds} of PostgreSQL's processes serving the bench's database (the web
    server's, the persister's, autovacuum's), this process's own connection excepted."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        pids = [pid for (pid,) in cursor.fetchall()]
    # A backend gone, or PostgreSQL on another host: its share stays uncounted.
    return {pid: seconds for pid in pids if (seconds := process_cpu_seconds(pid)) is not None}


def _p99(values):
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def _send(session, base, run, headers):
    answer = session.post(f"{base}/flow_runs/{run}/set_state/", json={"state": "FAILED"}, headers=headers)
    if answer.status_code != 200:
        raise RuntimeError(f"a transition failed: {answer.status_code} {answer.text[:200]}")


def flat_out(base, runs, headers):
    """Each run of `runs` set to FAILED by CLIENTS threads, each sending its next on its answer;
    returns (latencies in ms, window)."""
    timings, lock = [], threading.Lock()

    def loop(mine):
        session, mine_times = requests.Session(), []
        for run in mine:
            began = time.perf_counter()
            _send(session, base, run, headers)
            mine_times.append((time.perf_counter() - began) * 1000)
        with lock:
            timings.extend(mine_times)

    return _threads(loop, [runs[i::CLIENTS] for i in range(CLIENTS)], timings)


def steady(base, runs, headers, rate=STEADY_RATE):
    """Each run of `runs` set to FAILED, the k-th sent at start + k/rate (open loop: a slow answer
    does not delay the next send, another thread sends it); returns (latencies in ms, window)."""
    timings, lock, queue = [], threading.Lock(), list(enumerate(runs))
    start = time.monotonic() + 0.05

    def loop(_):
        session, mine_times = requests.Session(), []
        while True:
            with lock:
                if not queue:
                    break
                k, run = queue.pop(0)
            pause = start + k / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            began = time.perf_counter()
            _send(session, base, run, headers)
            mine_times.append((time.perf_counter() - began) * 1000)
        with lock:
            timings.extend(mine_times)

    return _threads(loop, [None] * CLIENTS, timings)


def _threads(loop, shares, timings):
    threads = [threading.Thread(target=loop, args=(share,)) for share in shares]
    began = time.monotonic()
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    return timings, (began, time.monotonic())


def phases(drive, base, chunks, headers, log_runs):
    """`drive` over four chunks: quiet, flood, flood, quiet. Returns (quiet latencies, flooded
    latencies, lines accepted per second while the flooded ones were timed, lines accepted in all)."""
    quiet, flooded, accepted, seconds, total = [], [], 0, 0.0, 0
    for chunk, with_logs in zip(chunks, (False, True, True, False)):
        if not with_logs:
            quiet += drive(base, chunk, headers)[0]
            continue
        writers = Writers(base + "/agent/logs", log_runs)
        try:
            time.sleep(2)  # the flood at full rate, the persister busy, before timing
            timings, (start, end) = drive(base, chunk, headers)
        finally:
            writers.stop()
        if writers.failures():
            raise RuntimeError(f"log batches failed, e.g. {writers.failures()[0]}")
        flooded += timings
        accepted += writers.accepted_between(start, end)
        seconds += end - start
        total += writers.accepted()
    return quiet, flooded, accepted / seconds, total


def run(table):
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        print("  logs beside transitions: PostgreSQL and Redis only (set DATABASE_URL and REDIS_URL)", flush=True)
        return
    # The bench's own stream: never a running server's. Set before the server and the persister start.
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
                                 for i in range(8 * TRANSITIONS + 200)])
    to_change = list(FlowRun.objects.filter(workspace=ws, name__startswith="t-").values_list("pk", flat=True))
    writers = FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, work_queue=queue, name=f"w-{i}",
                                                   state=State.RUNNING, scheduled_start=now, start_time=now)
                                           for i in range(WRITERS)])
    log_runs = [(run_.pk, token_of(FlowRun.objects.get(pk=run_.pk))) for run_ in writers]
    headers = {"Authorization": f"Bearer {operator}"}
    prefix = f"/api/accounts/{account.slug}/workspaces/{ws.slug}"

    server = Server()
    persister = Helper("persister")
    try:
        base = server.url + prefix
        flat_out(base, to_change[:200], headers)  # warm-up
        chunks = [to_change[200 + i * TRANSITIONS:200 + (i + 1) * TRANSITIONS] for i in range(8)]
        results = {"steady": phases(steady, base, chunks[:4], headers, log_runs),
                   "flat out": phases(flat_out, base, chunks[4:], headers, log_runs)}
        # The flood alone: what its lines cost the web server's CPU, the persister's process and the
        # agents' (PostgreSQL's share is not counted: its processes also serve whatever else runs here).
        server_before, persister_before = cpu_seconds(server.process.pid), persister.cpu()
        alone = Writers(base + "/agent/logs", log_runs)
        began = time.monotonic()
        database_before = database_cpu()
        time.sleep(10)
        writers_cpu = alone.cpu()
        alone.stop()
        seconds = time.monotonic() - began
        server_cpu = cpu_seconds(server.process.pid) - server_before
        persister_cpu = persister.cpu() - persister_before
        database_cpu_ = sum(cpu - database_before.get(pid, 0.0) for pid, cpu in database_cpu().items())
        if alone.failures():
            raise RuntimeError(f"log batches failed, e.g. {alone.failures()[0]}")
    finally:
        server.stop()
        persister.stop()
    for name, (quiet, flooded, rate, _) in results.items():
        pace = f"a steady {STEADY_RATE:.0f}/s" if name == "steady" else f"flat out, {CLIENTS} clients"
        table.add(f"state transitions over HTTP, {pace}, while agents write {LINES_PER_SECOND:,} log lines/s "
                  f"({len(flooded):,} transitions)",
                  f"p50 {statistics.median(flooded):.1f} / p99 {_p99(flooded):.1f} ms; logs accepted meanwhile "
                  f"{rate:,.0f} lines/s",
                  f"no logs: p50 {statistics.median(quiet):.1f} / p99 {_p99(quiet):.1f} ms",
                  f"{statistics.median(flooded) / statistics.median(quiet):.2f}",
                  "≤ 1.20" if name == "steady" else "(the flood's CPU)")
    lines = alone.accepted()
    per_1000 = lambda cpu: cpu * 1000 / max(lines, 1) * 1000  # noqa: E731 - ms per 1,000 lines
    table.add(f"log flood alone, {WRITERS} agents posting {BATCH}-line batches for {seconds:.0f} s",
              f"{lines / seconds:,.0f} lines/s accepted; CPU per 1,000 lines: web server {per_1000(server_cpu):.0f} ms, "
              f"log persister {per_1000(persister_cpu):.0f} ms, PostgreSQL {per_1000(database_cpu_):.0f} ms, the agents "
              f"{per_1000(writers_cpu):.0f} ms")
    accepted = lines + sum(result[3] for result in results.values())
    stored = Log.objects.filter(workspace=ws).count()
    assert stored == accepted, f"the API accepted {accepted} lines, {stored} were stored"
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
