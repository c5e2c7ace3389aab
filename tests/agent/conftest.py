"""Fixtures of the agent tests: real agent subprocesses pointed at a live server."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import api_prefix

REPO = Path(__file__).resolve().parents[2]


def process_tree(pid):
    """pid and every descendant of it, read from /proc (the flow's runner runs in its own session)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def alive(pid):
    """Whether `pid` runs (a zombie nobody reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def runner_pids(agent_pid):
    """The `python -m agent.runner` processes an agent started."""
    found = []
    for pid in process_tree(agent_pid)[1:]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"agent.runner" in cmdline.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def kill_tagged(tag):
    """SIGKILL every process whose environment carries ORCHESTRATOR_TEST_TAG=tag (orphans included)."""
    needle = f"ORCHESTRATOR_TEST_TAG={tag}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if needle in environ.read().split(b"\0"):
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=60.0, interval=0.2, what="condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


class AgentProcess:
    def __init__(self, process, health_port, log_path):
        self.process, self.health_port, self.log_path = process, health_port, log_path

    def output(self):
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout=30):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def start_agent(tmp_path):
    """start_agent(api_url, key, queue, name, *flags, env={...}) -> AgentProcess; all are stopped at
    teardown, and every runner they started too, orphans included."""
    started = []
    tag = f"{os.getpid()}-{time.monotonic_ns()}"

    def start(api_url, key, queue, name, *extra, env=None):
        port = free_port()
        log_path = tmp_path / f"{name}.log"
        env = {**os.environ, "ORCHESTRATOR_AGENT_QUERY_SECONDS": "0.3", "ORCHESTRATOR_AGENT_HEARTBEAT_SECONDS": "1",
               "ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS": "0.3", "ORCHESTRATOR_AGENT_WEBSERVER_PORT": str(port),
               "ORCHESTRATOR_AGENT_GRACE_SECONDS": "2", "ORCHESTRATOR_TEST_TAG": tag, **(env or {})}
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "start", "--api", api_url, "--key", key, "--queue", queue,
             "--name", name, *extra],
            cwd=REPO, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
        )
        agent = AgentProcess(process, port, log_path)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()
    kill_tagged(tag)


@pytest.fixture
def workspace_url(live_server, ws, log_persister_running):
    return live_server.url + api_prefix(ws)


def drain_logs():
    """Store every log line accepted so far (with Redis they wait for the log persister)."""
    from django.conf import settings

    if not settings.REDIS_URL:
        return
    from runs.logs import ingest
    from services import log_persister

    for _ in range(50):
        log_persister.run_once()
        if ingest.stream_length() == 0:
            return
    raise AssertionError("the log stream did not drain")


@pytest.fixture
def log_persister_running(settings):
    """With Redis, accepted log lines wait in a stream until the log persister stores them: a thread
    runs its passes beside the live server, as a Celery worker would (without Redis they are stored
    by the request)."""
    import threading

    from django.db import connections

    if not settings.REDIS_URL:
        yield
        return
    from services import log_persister

    stop = threading.Event()

    def passes():
        try:
            while not stop.is_set():
                try:
                    log_persister.run_once()
                except Exception:  # noqa: BLE001 - a test that stops Redis: the next pass retries
                    pass
                stop.wait(0.2)
        finally:
            connections.close_all()

    thread = threading.Thread(target=passes, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)
