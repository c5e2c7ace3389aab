"""Over HTTP against the production server: requests/s, p50/p99 and the server's CPU per request.

Starts gunicorn as production runs it (`-w 2 -k gthread --threads 8`, DEBUG off) on the bench's
throw-away PostgreSQL database and REDIS_URL, then drives each workload from client threads with
keep-alive sessions. The server's CPU per request (user + system time of gunicorn and its workers,
read from /proc, divided by the requests) is the robust figure on a shared machine; each is shown
beside a do-nothing authenticated endpoint (`ping`) measured in the same run, and the heartbeat
also beside gunicorn alone: the same server command on an application that only answers `{}`
(bench/_floor_app.py), the floor under every request here.

BENCH_HTTP_REQUESTS (default 2000) requests per workload, BENCH_HTTP_CLIENTS (8) client threads,
BENCH_HTTP_BEATING_RUNS (1000) runs the heartbeats go to in turn.
PostgreSQL only: the SQLite test database lives in the bench's own process.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import requests
from django.conf import settings
from django.db import connection
from django.utils import timezone

from runs.models import Account, Agent, ApiKey, Flow, FlowRun, Role, State, WorkQueue, Workspace
from runs.run_tokens import token_for

REQUESTS = int(os.environ.get("BENCH_HTTP_REQUESTS", "2000"))
CLIENTS = int(os.environ.get("BENCH_HTTP_CLIENTS", "8"))
BEATING = int(os.environ.get("BENCH_HTTP_BEATING_RUNS", "1000"))
TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def process_cpu_seconds(pid):
    """User + system CPU seconds of the process `pid` alone, as /proc says now; None when it is gone
    (or on another host)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def cpu_seconds(pid):
    """User + system CPU seconds of `pid` and every descendant, as /proc says now."""
    return sum(seconds for seconds in map(process_cpu_seconds, _tree(pid)) if seconds is not None)


def _database_url():
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db.get('USER') or 'postgres'}{password}@{db.get('HOST') or '127.0.0.1'}:" \
           f"{db.get('PORT') or 5432}/{db['NAME']}"


def production_env():
    """The environment of a production process on the bench's throw-away database and REDIS_URL."""
    return {**os.environ, "DEBUG": "false", "SECRET_KEY": settings.SECRET_KEY,  # the run tokens are signed with it
            "ALLOWED_HOSTS": "127.0.0.1", "ORCHESTRATOR_SECURE_SSL_REDIRECT": "false",
            "DATABASE_URL": _database_url(), "REDIS_URL": settings.REDIS_URL, "LOG_LEVEL": "WARNING",
            "ORCHESTRATOR_THROTTLE_EXPENSIVE_RATE": "", "WHITENOISE_USE_FINDERS": "true"}


class Server:
    def __init__(self, application="orchestrator.wsgi"):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = production_env()
        # Its log goes to a file, not a pipe: a pipe nobody reads fills (64 KiB of warnings, a few
        # hundred 409s) and every thread of the server then waits on the logging lock for ever.
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), application, "-w", "2", "-k", "gthread",
             "--threads", "8", "-b", f"127.0.0.1:{self.port}", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:  # any path, for the floor
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        self.log.seek(0)
        raise RuntimeError(f"gunicorn did not answer /healthz: {self.log.read().decode(errors='replace')[-2000:]}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def drive(server, make_request, count, clients=CLIENTS):
    """Send `count` requests from `clients` threads; `make_request(session, i)` -> response.
    Returns (requests/s, p50 ms, p99 ms, server CPU ms per request)."""
    timings, lock, failures = [], threading.Lock(), []
    share = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    starts = [sum(share[:i]) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def loop(n):
        session = requests.Session()
        mine = []
        barrier.wait()
        for i in range(starts[n], starts[n] + share[n]):
            began = time.perf_counter()
            answer = make_request(session, i)
            mine.append((time.perf_counter() - began) * 1000)
            if answer.status_code >= 300:
                failures.append((answer.status_code, answer.text[:200]))
        with lock:
            timings.extend(mine)

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(clients)]
    [thread.start() for thread in threads]
    cpu_before = cpu_seconds(server.process.pid)
    barrier.wait()
    began = time.perf_counter()
    [thread.join() for thread in threads]
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(server.process.pid) - cpu_before
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    ordered = sorted(timings)
    return (count / elapsed, statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            cpu * 1000 / count)


def _row(table, name, figures, ping, aim, alone=None):
    """A workload's row beside the ping (and beside gunicorn alone, `alone`'s figures, when given)."""
    rate, p50, p99, cpu = figures
    baseline, ratio = f"ping {ping[3]:.2f} ms CPU/req", f"{cpu / ping[3]:.1f}×"
    if alone is not None:
        baseline, ratio = f"{baseline}; gunicorn alone {alone[3]:.2f}", f"{ratio}; {cpu / alone[3]:.1f}× alone"
    table.add(f"HTTP {name}", f"{cpu:.2f} ms CPU/req; {rate:,.0f} req/s, p50 {p50:.1f} / p99 {p99:.1f} ms",
              baseline, ratio, aim)


def _idle_cpu_ms_per_second(server, seconds):
    """The server's CPU milliseconds per second while no request comes."""
    time.sleep(1)  # the last answers' writes done
    before = cpu_seconds(server.process.pid)
    time.sleep(seconds)
    return (cpu_seconds(server.process.pid) - before) * 1000 / seconds


def run(table):
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        print("  HTTP workloads: PostgreSQL and Redis only (set DATABASE_URL and REDIS_URL)", flush=True)
        return
    account = Account.objects.create(name="Bench HTTP", slug=f"bench-http-{uuid.uuid4().hex[:6]}")
    ws = Workspace.objects.create(account=account, name="Bench", slug="bench")
    queue = WorkQueue.objects.create(workspace=ws, name="default")
    flow = Flow.objects.create(workspace=ws, name="nightly")
    flow.register_version(entrypoint="bench:noop")
    agent = Agent.objects.create(workspace=ws, name="bench-http-agent")
    agent.queues.set([queue])
    _, operator = ApiKey.issue(workspace=ws, name="bench-operator", role=Role.OPERATOR)
    _, agent_key = ApiKey.issue(workspace=ws, name="bench-agent", role=Role.AGENT)
    prefix = f"/api/accounts/{account.slug}/workspaces/{ws.slug}"
    now = timezone.now()
    # Runs to change the state of, and running runs to beat for, made ahead of the timing.
    FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, work_queue=queue, name=f"s-{i}", state=State.RUNNING,
                                         scheduled_start=now - timedelta(hours=1), start_time=now, agent=agent)
                                 for i in range(REQUESTS)])
    running = list(FlowRun.objects.filter(workspace=ws, state=State.RUNNING).order_by("pk"))
    # The planner's statistics, as autovacuum keeps them on a server in use: without them, a table
    # just filled by the bench may be read by the wrong index (a run by workspace, 20,000 rows).
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    user_auth = {"Authorization": f"Bearer {operator}"}
    agent_auth = {"Authorization": f"Bearer {agent_key}"}

    floor = Server("bench._floor_app")
    try:
        drive(floor, lambda s, i: s.post(f"{floor.url}/heartbeat", headers=agent_auth), min(200, REQUESTS))
        alone = drive(floor, lambda s, i: s.post(f"{floor.url}/heartbeat", headers=agent_auth), REQUESTS)
    finally:
        floor.stop()
    table.add("HTTP gunicorn alone (an app that answers {})", f"{alone[3]:.2f} ms CPU/req; {alone[0]:,.0f} req/s, "
              f"p50 {alone[1]:.1f} / p99 {alone[2]:.1f} ms")

    server = Server()
    try:
        base = server.url + prefix
        warm = min(200, REQUESTS)
        drive(server, lambda s, i: s.get(f"{base}/ping", headers=user_auth), warm)
        ping = drive(server, lambda s, i: s.get(f"{base}/ping", headers=user_auth), REQUESTS)
        table.add("HTTP ping (do-nothing, API key)", f"{ping[3]:.2f} ms CPU/req; {ping[0]:,.0f} req/s, "
                  f"p50 {ping[1]:.1f} / p99 {ping[2]:.1f} ms")
        tag = uuid.uuid4().hex[:8]
        _row(table, "create a run", drive(server, lambda s, i: s.post(
            f"{base}/flow_runs/", json={"flow": flow.name, "idempotency_key": f"{tag}-{i}"}, headers=user_auth),
            REQUESTS), ping, "≤ 2.8 ms CPU/req")
        _row(table, "user state change", drive(server, lambda s, i: s.post(
            f"{base}/flow_runs/{running[i].pk}/set_state/", json={"state": "FAILED"}, headers=user_auth), REQUESTS),
            ping, "≤ 2.3 ms CPU/req")
        # BEATING runs beat in turn. Their first beats are written in the request (no process has
        # heard them). Then every run beats once from each client (so through every process): as
        # runs that beat for longer than a few intervals are, it is in each process's view
        # (runs/beats_behind.py), and its beats are answered from there, written behind.
        beating = list(FlowRun.objects.filter(workspace=ws, auto_scheduled=False, state=State.SCHEDULED)[:BEATING])
        FlowRun.objects.filter(pk__in=[r.pk for r in beating]).update(state=State.RUNNING, start_time=now, agent=agent)
        tokens = [{"Authorization": f"Bearer {token_for(r.pk, ws.pk, r.token_generation)}"} for r in beating]

        def beating_from(offset):
            def beat(session, i):
                turn = (i + offset) % len(beating)
                return session.post(f"{base}/agent/flow_runs/{beating[turn].pk}/heartbeat", headers=tokens[turn])
            return beat

        _row(table, f"flow-run heartbeat, first beats ({len(beating):,} runs)",
             drive(server, beating_from(0), len(beating)), ping, "(written in the request)", alone=alone)
        for client in range(1, CLIENTS + 1):
            drive(server, beating_from(client * len(beating) // CLIENTS), len(beating))
        _row(table, f"flow-run heartbeat ({len(beating):,} runs in turn, each heard before)",
             drive(server, beating_from(0), REQUESTS), ping, "≤ 0.6 ms CPU/req", alone=alone)
        # What the processes' writers of beats behind cost with nothing heard: each reads its viewed
        # runs again every interval; shown per beat at one beat per run every 30 s (the agents' default).
        idle = _idle_cpu_ms_per_second(server, seconds=5)
        table.add(f"HTTP heartbeat writers, idle, {len(beating):,} runs viewed",
                  f"{idle:.1f} ms CPU/s; {idle * 30 / len(beating):.3f} ms per beat at a beat per run per 30 s")
        # The runs made above are not due before the poll: it is measured with nothing to hand out.
        FlowRun.objects.filter(workspace=ws, state=State.SCHEDULED).update(scheduled_start=now + timedelta(days=1))
        _row(table, "agent poll, nothing due", drive(server, lambda s, i: s.post(
            f"{base}/agent/claim", json={"agent_id": agent.pk, "max_runs": 10}, headers=agent_auth), REQUESTS),
            ping, "≤ 1.7 ms CPU/req")
        # Each claim takes 200 runs made due just before it (by this process, whose CPU is not the
        # server's); the server's CPU is read over all the rounds, since /proc counts in 10 ms ticks.
        rounds, cpu, latencies = 20, 0.0, []
        for round_ in range(rounds):
            moment = timezone.now()
            FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, work_queue=queue, name=f"due-{round_}-{i}",
                                                 scheduled_start=moment - timedelta(seconds=i)) for i in range(200)])
            before = cpu_seconds(server.process.pid)
            began = time.perf_counter()
            answer = requests.post(f"{base}/agent/claim", json={"agent_id": agent.pk, "max_runs": 200},
                                   headers=agent_auth, timeout=60)
            latencies.append((time.perf_counter() - began) * 1000)
            cpu += cpu_seconds(server.process.pid) - before
            if answer.status_code != 200 or len(answer.json()["runs"]) != 200:
                raise RuntimeError(f"the claim answered {answer.status_code}: {answer.text[:200]}")
            FlowRun.objects.filter(workspace=ws, state=State.SUBMITTED).update(state=State.RUNNING, start_time=moment)
        per_claim = cpu * 1000 / rounds
        table.add("HTTP claim 200 due runs", f"{per_claim:.2f} ms CPU/req (mean of {rounds}); p50 "
                  f"{statistics.median(latencies):.1f} ms", f"ping {ping[3]:.2f} ms CPU/req",
                  f"{per_claim / ping[3]:.1f}×", "≤ 10 ms CPU/req")
    finally:
        server.stop()
