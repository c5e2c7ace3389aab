"""The expensive endpoints' throttle (creating runs, listing them, previews): per caller, a sliding
window of requests; on Redis its log is a list one script keeps (runs/api/throttles.py)."""

import uuid
from types import SimpleNamespace
from unittest import mock

import pytest
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from rest_framework.throttling import SimpleRateThrottle

from runs.api.throttles import ExpensiveEndpointThrottle
from tests import factories


@pytest.fixture
def on_redis(settings):
    """The default cache on the suite's Redis, under a prefix of this test's own (nothing is cleared)."""
    from orchestrator.settings import redis_cache_options

    if not settings.REDIS_URL:
        pytest.skip("needs Redis (REDIS_URL)")
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": settings.REDIS_URL, "KEY_PREFIX": f"test-{uuid.uuid4().hex}",
                                   "OPTIONS": redis_cache_options()}}


@pytest.fixture(params=["local cache", "redis"])
def counters(request):
    if request.param == "redis":
        request.getfixturevalue("on_redis")
    return request.param


def test_creating_runs_is_throttled_per_key_and_says_when_to_come_back(operator, prefix, ws, settings, counters):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_EXPENSIVE_RATE": "2/minute"}
    flow = factories.flow(ws)
    answers = [operator.post(f"{prefix}/flow_runs/", {"flow": flow.name}, format="json") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [201, 201, 429]
    assert 59 <= int(answers[-1]["Retry-After"]) <= 60


class DrfReference(SimpleRateThrottle):
    """DRF's own sliding log, a pickled list in a cache of its own."""

    cache = LocMemCache("drf-reference", {})
    rate = "3/minute"

    def get_cache_key(self, request, view):
        return "caller"


@pytest.mark.django_db
def test_on_redis_the_log_decides_and_answers_as_drfs_list_does(settings, on_redis):
    assert isinstance(caches["default"], RedisCache)
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_EXPENSIVE_RATE": "3/minute"}
    DrfReference.cache.clear()
    caller = SimpleNamespace(auth=None, user=SimpleNamespace(pk=f"test-{uuid.uuid4().hex}"))
    start = 1_800_000_000.25
    for later in [0, 1, 2, 3, 30, 59.9, 60, 60.5, 61, 62, 62.5, 120, 200, 200, 200, 200.1]:
        decisions = []
        for throttle_class in (DrfReference, ExpensiveEndpointThrottle):
            with mock.patch.object(throttle_class, "timer", staticmethod(lambda: start + later)):
                throttle = throttle_class()
                allowed = throttle.allow_request(caller, None)
                decisions.append((allowed, None if allowed else throttle.wait()))
        assert decisions[0] == decisions[1], later
