"""The events core's harness: a private redis-server the test may stop and start, buffers chosen
per test, and helpers to emit, drain and count.

The private server persists with `appendonly yes` and `appendfsync always` in the test's own
directory, as the README recommends for production: a restart keeps the stream, the consumer
group and its pending entries. It listens on 127.0.0.1 on a free port, never the shared server.
Without the redis-server binary these tests skip, except under ORCHESTRATOR_REQUIRE_SERVICES=1
(CI), where they fail.
"""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter

import pytest
import redis
from django.db import connection

from events import buffer, persister
from events.emit import make, resource

REQUIRED = os.environ.get("ORCHESTRATOR_REQUIRE_SERVICES") == "1"


def free_port():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class PrivateRedis:
    """A redis-server of the test alone, with an append-only file in `workdir`."""

    def __init__(self, executable, workdir, appendonly=True):
        self.executable, self.workdir, self.appendonly = executable, workdir, appendonly
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                client.close()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self):
        """SIGTERM, as an orderly restart does (Redis finishes its append-only file first)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)

    def client(self):
        return redis.Redis(port=self.port, socket_timeout=2)

    def restart_once_met(self, failures, at_least=0.3, at_most=10):
        """Stop, and start again once `failures` (a list another thread appends to when it meets the
        outage) holds one, and `at_least` seconds passed: a fixed pause can fall between two
        passes of that thread on a loaded machine."""
        self.stop()
        time.sleep(at_least)
        deadline = time.monotonic() + at_most
        while not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()


@pytest.fixture
def private_redis(tmp_path):
    executable = shutil.which("redis-server")
    if executable is None:
        if REQUIRED:
            pytest.fail("ORCHESTRATOR_REQUIRE_SERVICES=1 but redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(executable, tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def events_in_redis(settings, private_redis):
    """Events buffer in the private server's stream."""
    settings.REDIS_URL = private_redis.url
    buffer.reset()
    yield private_redis
    buffer.reset()


@pytest.fixture
def events_in_table(settings):
    """The embedded mode: no REDIS_URL, events wait in the PendingEvent table."""
    settings.REDIS_URL = ""
    buffer.reset()
    yield
    buffer.reset()


@pytest.fixture(params=["table", "redis"])
def any_buffer(request):
    """Each test twice: with the table buffer and with the Redis stream."""
    if request.param == "redis":
        return request.getfixturevalue("events_in_redis")
    request.getfixturevalue("events_in_table")
    return None


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (partitions, ON CONFLICT, row locks); CI runs it there")


def tick(workspace_id, i, **kw):
    """A test event: name test.tick, resource test/<i>."""
    return make(workspace_id, "test.tick", resource("test", i), payload={"i": i}, **kw)


def stored_counts():
    """{event id (str): how many rows have it}."""
    from events.models import Event

    return Counter(str(i) for i in Event.objects.values_list("id", flat=True))


def buffered():
    """(stream entries, pending rows) still waiting."""
    from events.models import PendingEvent

    return buffer.stream_length(), PendingEvent.objects.count()


def drain(limit=50):
    """Persister passes until nothing is buffered (a failing pass is retried)."""
    from events.sender import sender

    assert sender.wait(), "the sender thread did not hand its events over"
    for _ in range(limit):
        try:
            persister.run_once()
        except redis.RedisError:
            time.sleep(0.1)
            continue
        if buffered() == (0, 0):
            return
    raise AssertionError(f"the buffer did not drain: {buffered()} left")


class Worker(threading.Thread):
    """A thread that runs `target` and closes its database connection; `.error` holds what it raised."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self.target, self.error = target, None

    def run(self):
        from django.db import connections

        try:
            self.target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            connections.close_all()
