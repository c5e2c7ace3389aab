"""Throttling: failed authentication per client address, expensive endpoints per caller.

Rates are read from `settings.ORCHESTRATOR` on every request (not frozen at import like DRF's
defaults), so an operator changes them in the environment and a test with `settings`.
Counters live in Django's cache: Redis when REDIS_URL is set, else a file cache every process
of the host shares (see CACHES in orchestrator/settings.py).

Throttling fails open (DESIGN: "degrade, don't fail"): when the cache errs, requests are served
unthrottled rather than refused, and for CACHE_RETRY_SECONDS the cache is not asked at all, so a
stopped or frozen Redis costs one request per process and interval its connect timeout, not every
request. One warning per interval says so in the log.
"""

import logging
import threading
import time

from django.conf import settings
from django.core.cache import cache
from redis.exceptions import RedisError
from rest_framework import exceptions
from rest_framework.throttling import SimpleRateThrottle

from runs.models import ApiKey

logger = logging.getLogger(__name__)

# What a cache backend raises when its server is away: redis-py's connection and timeout errors,
# or the file cache's disk errors.
CACHE_ERRORS = (RedisError, OSError)


class CounterCacheBreaker:
    """Skips the throttle cache for a while after it failed: a small circuit breaker, per process."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock  # seconds; a parameter so that tests move time instead of sleeping
        self.skip_until = 0.0  # clock() before which the cache is not asked
        self.failing = False
        self._lock = threading.Lock()

    def call(self, operation, fallback):
        """operation() from the cache, or `fallback` when the cache failed now or recently."""
        if self.clock() < self.skip_until:
            return fallback
        try:
            result = operation()
        except CACHE_ERRORS as exc:
            self._trip(exc)
            return fallback
        if self.failing:
            self.failing = False
            logger.warning("The throttle cache answers again; API throttling is back on.")
        return result

    def _trip(self, exc):
        retry = settings.ORCHESTRATOR["CACHE_RETRY_SECONDS"]
        with self._lock:  # concurrent requests failing together log once
            if self.clock() < self.skip_until:
                return
            self.skip_until = self.clock() + retry
            self.failing = True
        logger.warning("The throttle cache (%s) failed: %s: %s. API throttling is off; the cache is tried again "
                       "in %ss.", settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1], type(exc).__name__,
                       str(exc)[:200], retry)

    def reset(self):
        self.skip_until, self.failing = 0.0, False


counter_cache = CounterCacheBreaker()


def _parse_rate(rate):
    """'300/minute' -> (300, 60). An empty rate turns the throttle off."""
    if not rate:
        return None, None
    count, period = rate.split("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]


class ExpensiveEndpointThrottle(SimpleRateThrottle):
    """Limits the endpoints that scan many rows or create runs, per API key (or user, or address).

    A view lists it in `throttle_classes`; with `expensive_actions` only those of its actions count.
    """

    scope = "expensive"
    setting = "THROTTLE_EXPENSIVE_RATE"

    def allow_request(self, request, view):
        actions = getattr(view, "expensive_actions", None)
        if actions is not None and getattr(view, "action", None) not in actions:
            return True
        count_and_decide = super().allow_request
        return counter_cache.call(lambda: count_and_decide(request, view), fallback=True)

    def get_rate(self):
        return settings.ORCHESTRATOR[self.setting] or None

    def parse_rate(self, rate):
        return _parse_rate(rate)

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiKey):
            ident = f"key{request.auth.pk}"
        elif getattr(request.user, "pk", None):
            ident = f"user{request.user.pk}"
        else:
            ident = self.get_ident(request)
        return f"throttle_{self.scope}_{ident}"


class FailedAuthenticationLimiter:
    """Counts failed key checks per client address; past the rate, the address waits (HTTP 429)."""

    def __init__(self, request):
        self.address = request.META.get("REMOTE_ADDR", "unknown")
        self.limit, self.window = _parse_rate(settings.ORCHESTRATOR["THROTTLE_FAILED_AUTH_RATE"])
        self.cache_key = f"throttle_failed_auth_{self.address}"

    def check(self):
        """Raise Throttled when this address failed too often within the window."""
        if self.limit and (counter_cache.call(lambda: cache.get(self.cache_key), fallback=None) or 0) >= self.limit:
            raise exceptions.Throttled(wait=self.window, detail="Too many failed authentications from this address.")

    def record_failure(self):
        if self.limit:
            counter_cache.call(self._count_failure, fallback=None)

    def _count_failure(self):
        # add() starts the window only once; incr() after it is atomic on Redis and in locmem.
        cache.add(self.cache_key, 0, timeout=self.window)
        try:
            cache.incr(self.cache_key)
        except ValueError:  # expired between add and incr
            cache.set(self.cache_key, 1, timeout=self.window)
