"""Redis away (stopped, or frozen mid-conversation): the API keeps serving what needs no broker.

Throttle counters live in the cache; when it fails, throttling fails open with one warning per
interval, and the cache is left alone for ORCHESTRATOR_CACHE_RETRY_SECONDS so that requests do
not each wait for a connect timeout. /healthz still names the broker as down.

These tests start a private redis-server on a free port (never the shared one): they skip when
redis-server is not installed, unless ORCHESTRATOR_REQUIRE_SERVICES=1 (CI) says it must be.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from unittest import mock

import pytest
import redis

from orchestrator.settings import redis_cache_options
from runs.api import throttles
from runs.models import FlowRun, Role
from tests import factories
from tests.conftest import api_prefix

THROTTLE_LOGGER = "runs.api.throttles"


class PrivateRedis:
    """A redis-server of this test alone: no persistence, on a port nobody else uses."""

    def __init__(self, executable):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.executable, self.process = executable, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.process.terminate()
            self.process.wait(timeout=10)

    def freeze(self):
        """SIGSTOP: connections are accepted by the kernel but never answered, like a hung host."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis():
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("ORCHESTRATOR_REQUIRE_SERVICES") == "1":
            pytest.fail("ORCHESTRATOR_REQUIRE_SERVICES=1 but redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(executable)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def breaker_reset():
    """The breaker is per process: a test that trips it must not leave others unthrottled."""
    throttles.counter_cache.reset()
    yield throttles.counter_cache
    throttles.counter_cache.reset()


@pytest.fixture
def redis_cache(settings, private_redis, breaker_reset):
    """The cache on the private server, with the production options (timeouts, no retries).
    Changing settings.CACHES makes Django drop its cache connections (the setting_changed signal)."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": private_redis.url, "KEY_PREFIX": "outage-test",
                                   "OPTIONS": redis_cache_options()}}
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_FAILED_AUTH_RATE": "3/minute",
                             "THROTTLE_EXPENSIVE_RATE": "1000/minute", "CACHE_RETRY_SECONDS": 60}
    return private_redis


def failed_auth_statuses(api, ws, count):
    api.credentials(HTTP_AUTHORIZATION="Bearer not-a-key")
    return [api.get(f"{api_prefix(ws)}/ping").status_code for _ in range(count)]


def throttle_warnings(caplog):
    return [r for r in caplog.records if r.name == THROTTLE_LOGGER and r.levelno == logging.WARNING
            and "throttling is off" in r.getMessage()]


@pytest.fixture
def asked(monkeypatch, breaker_reset):
    """asked() -> how often the throttles have asked their cache so far (what a request pays for an
    away server is a connect or read timeout each time)."""
    count = [0]
    real_call = breaker_reset.call

    def call(operation, fallback):
        def counted():
            count[0] += 1
            return operation()
        return real_call(counted, fallback)

    monkeypatch.setattr(breaker_reset, "call", call)
    return lambda: count[0]


def timed(call):
    started = time.perf_counter()
    response = call()
    return response, time.perf_counter() - started


@pytest.mark.django_db
def test_with_redis_stopped_the_api_serves_and_throttles_fail_open_with_one_warning(
        api, ws, redis_cache, settings, caplog, asked):
    flow = factories.flow(ws)
    secret = factories.api_key(ws, role=Role.OPERATOR)[1]
    prefix = api_prefix(ws)
    assert failed_auth_statuses(api, ws, 4) == [401, 401, 401, 429]  # counters work while Redis is up

    redis_cache.stop()
    caplog.set_level(logging.WARNING, logger=THROTTLE_LOGGER)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    before = asked()
    for i in range(10):
        for call in (lambda: api.get(f"{prefix}/ping"), lambda: api.get(f"{prefix}/flow_runs/"),
                     lambda: api.post(f"{prefix}/flow_runs/", {"flow": flow.name, "name": f"r{i}"}, format="json")):
            response = call()
            assert response.status_code in (200, 201), response.content[:300]
    assert FlowRun.objects.filter(flow=flow).count() == 10
    # Twenty of the thirty requests are throttled; the first to find the server away opens the breaker,
    # and the others do not ask it (each would pay a connect timeout when the host does not answer).
    assert asked() - before == 1
    # Fails open: bad keys are 401, never 429 (the counter cannot be read) and never 500.
    assert failed_auth_statuses(api, ws, 6) == [401] * 6
    assert len(throttle_warnings(caplog)) == 1, [r.getMessage() for r in caplog.records]

    settings.REDIS_URL = redis_cache.url  # the broker is the same stopped server
    health = api.get("/healthz")
    assert health.status_code == 503
    assert health.json()["broker"]["ok"] is False and health.json()["database"]["ok"] is True

    redis_cache.start()
    later = time.monotonic() + 61  # past the retry interval: the next request asks the cache again
    with mock.patch.object(throttles.counter_cache, "clock", lambda: later):
        assert failed_auth_statuses(api, ws, 4) == [401, 401, 401, 429]  # counting again
    assert any("answers again" in r.getMessage() for r in caplog.records if r.name == THROTTLE_LOGGER)
    assert api.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_the_expensive_endpoint_throttle_counts_and_fails_open(api, ws, redis_cache, settings, caplog):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_EXPENSIVE_RATE": "2/minute"}
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.api_key(ws, role=Role.VIEWER)[1]}")
    url = f"{api_prefix(ws)}/flow_runs/"
    assert [api.get(url).status_code for _ in range(3)] == [200, 200, 429]
    redis_cache.stop()
    assert [api.get(url).status_code for _ in range(5)] == [200] * 5
    assert len(throttle_warnings(caplog)) == 1


@pytest.mark.django_db
def test_a_frozen_redis_costs_one_request_a_short_timeout_then_nothing(api, ws, redis_cache, settings, caplog,
                                                                       asked):
    secret = factories.api_key(ws, role=Role.VIEWER)[1]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    url = f"{api_prefix(ws)}/flow_runs/"  # counted per key (a valid key's ping asks no counter)
    assert api.get(url).status_code == 200  # a pooled connection to the server exists
    redis_cache.freeze()
    try:
        first, first_took = timed(lambda: api.get(url))
        after_first = asked()
        rest = [api.get(url) for _ in range(10)]
    finally:
        redis_cache.thaw()
    timeout = redis_cache_options()["socket_timeout"]
    assert first.status_code == 200 and all(response.status_code == 200 for response in rest)
    # redis-py's default would wait 5 s (and on every request); here one waits the timeout, the rest skip.
    assert timeout <= first_took < 4.0, first_took
    assert asked() == after_first
    assert len(throttle_warnings(caplog)) == 1


@pytest.mark.django_db
def test_the_breaker_warns_once_per_interval_and_tries_the_cache_again(api, ws, settings, breaker_reset, caplog):
    """Any cache error (here a patched one, no Redis needed) opens the breaker for the interval."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "CACHE_RETRY_SECONDS": 5}
    api.credentials(HTTP_AUTHORIZATION="Bearer orch_unknown")  # only failed key checks ask the cache
    url = f"{api_prefix(ws)}/ping"
    now = [1000.0]
    failing_cache = mock.Mock(**{"get_many.side_effect": redis.ConnectionError("refused")})
    failing_get = failing_cache.get_many
    with mock.patch.object(throttles.counter_cache, "clock", lambda: now[0]), \
            mock.patch.object(throttles, "cache", failing_cache):
        assert [api.get(url).status_code for _ in range(20)] == [401] * 20
        assert failing_get.call_count == 1  # the other 19 requests skipped the cache
        now[0] += 4.9
        api.get(url)
        assert failing_get.call_count == 1 and len(throttle_warnings(caplog)) == 1
        now[0] += 0.2  # the interval is over: one request tries again, fails, warns again
        assert [api.get(url).status_code for _ in range(5)] == [401] * 5
        assert failing_get.call_count == 2 and len(throttle_warnings(caplog)) == 2
