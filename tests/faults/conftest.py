"""The fault-injection harness: real servers and real processes, broken on purpose.

Every test here runs against PostgreSQL (the test database pytest-django made, shared with the
processes the test starts) and starts what it breaks itself: a private redis-server on a free
port, a web server (uvicorn) and Celery workers as subprocesses, agents. Nothing here touches the
machine's shared Redis or PostgreSQL server beyond the test database.

CI sets ORCHESTRATOR_REQUIRE_SERVICES=1: a missing redis-server or PostgreSQL is then a failure,
not a skip.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

from tests.agent.conftest import REPO, free_port, wait_for

REQUIRED = os.environ.get("ORCHESTRATOR_REQUIRE_SERVICES") == "1"


def _missing(what):
    if REQUIRED:
        pytest.fail(f"ORCHESTRATOR_REQUIRE_SERVICES=1 but {what}")
    pytest.skip(what)


@pytest.fixture
def postgres(transactional_db):
    """The test database's connection settings; these tests need PostgreSQL (CI always has it)."""
    if connection.vendor != "postgresql":
        _missing("the fault suite needs PostgreSQL (set DATABASE_URL)")
    return connection.settings_dict


def database_url(settings_dict):
    """A DATABASE_URL for the database the test runs in (pytest-django's test database)."""
    user = settings_dict.get("USER") or "postgres"
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may stop and start."""

    def __init__(self, workdir):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers, timeout=10, interval=0.05, what=f"redis-server on port {self.port}")
        return self

    def answers(self):
        import redis

        try:
            return redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.2).ping()
        except redis.RedisError:
            return False

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path):
    if not shutil.which("redis-server"):
        _missing("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def service_env(postgres, redis_url, var_dir, **extra):
    """The environment of a process of ours pointed at the test database and `redis_url`."""
    env = {**os.environ, "DEBUG": "true", "DATABASE_URL": database_url(postgres), "REDIS_URL": redis_url,
           "ORCHESTRATOR_VAR_DIR": str(var_dir), "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
           "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING"}
    env.update({key: str(value) for key, value in extra.items()})
    return env


class Process:
    """A subprocess in its own process group, its output in a file the failure message can show."""

    def __init__(self, name, command, env, log_path):
        self.name, self.log_path = name, log_path
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_path.open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def output(self, tail=3000):
        return self.log_path.read_text(errors="replace")[-tail:]

    def kill(self, sig=signal.SIGKILL):
        """Signal the whole process group (a SIGKILL is the machine dying under it)."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def processes(tmp_path):
    """processes(name, command, env) -> Process; every one is killed at teardown."""
    started = []

    def start(name, command, env):
        process = Process(name, command, env, tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def worker_command(name="worker"):
    """A Celery worker as production runs it (threads), without the chatter between workers."""
    return [sys.executable, "-m", "celery", "-A", "orchestrator", "worker", "--pool", "threads", "--concurrency", "2",
            "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "WARNING", "-n", f"{name}@%h"]


@pytest.fixture
def celery_services(processes, postgres, tmp_path):
    """celery_services(redis_url, **env) -> (worker, beat) on that broker, mark-late-runs every second."""

    def start(redis_url, **env):
        env = service_env(postgres, redis_url, tmp_path / "var-celery", ORCHESTRATOR_LATE_RUNS_LOOP_SECONDS=1, **env)
        return (processes("worker", worker_command(), env),
                processes("beat", [sys.executable, "-m", "celery", "-A", "orchestrator", "beat", "--loglevel",
                                   "WARNING"], env))

    return start


class WebServer:
    def __init__(self, process, port):
        self.process, self.port = process, port
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path, headers=None, timeout=10):
        return request("GET", self.url + path, headers=headers, timeout=timeout)


@pytest.fixture
def web_server(processes, postgres, tmp_path):
    """web_server(redis_url, **env) -> a uvicorn of ours on a free port, answering /healthz."""

    def start(redis_url, **env):
        port = free_port()
        process = processes("web", [sys.executable, "-m", "uvicorn", "orchestrator.asgi:application",
                                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            service_env(postgres, redis_url, tmp_path / "var-web", **env))
        server = WebServer(process, port)
        wait_for(lambda: server.get("/healthz")[0] is not None, timeout=60, interval=0.2,
                 what=lambda: f"the web server to answer\n{process.output()}")
        return server

    return start


def request(method, url, *, headers=None, body=None, timeout=10):
    """(status, body text), or (None, error) when nothing answered."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"


class Load:
    """Threads calling `call()` in a loop until stopped; counts what came back.

    `call()` returns an answer's status (None for no answer). `statuses` counts them, `samples`
    keeps (status, body) of the first few of each status for the failure message.
    """

    def __init__(self, call, threads=4):
        self.call = call
        self.statuses = Counter()
        self.samples = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self):
        while not self.stopping.is_set():
            status, body = self.call()
            with self.lock:
                self.statuses[status] += 1
                self.samples.setdefault(status, body[:500] if isinstance(body, str) else body)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def server_errors(self):
        """Answers of 500 and above other than the 503s that say "try again"."""
        return {status: n for status, n in self.statuses.items() if status is not None and status >= 500
                and status != 503}


def beat(*names):
    """One pass of each service, through Towel, as Celery beat would trigger it; returns the summaries."""
    from services import towel

    return {name: towel.run(name) for name in names}


def no_failed_passes_since(moment):
    from services.models import ServicePass

    failed = list(ServicePass.objects.filter(ok=False, started__gte=moment).values_list("service", "error"))
    assert not failed, f"service passes failed: {failed}"


def settle(seconds):
    """Let real processes do their part (only in this suite: it is about time passing for real)."""
    time.sleep(seconds)


__all__ = ["REPO", "Path", "wait_for"]
