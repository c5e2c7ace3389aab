"""Throttling: failed authentication per client address, expensive endpoints per caller.

The client address is orchestrator.client_address's: X-Forwarded-For only through trusted proxies.

Rates are read from `settings.ORCHESTRATOR` on every request (not frozen at import like DRF's
defaults), so an operator changes them in the environment and a test with `settings`.
Counters live in Django's cache: Redis when REDIS_URL is set, else a file cache every process
of the host shares (see CACHES in orchestrator/settings.py). On Redis the expensive endpoints' log
is a Redis list one script keeps (SLIDING_LOG), one round trip per request.

Throttling fails open (DESIGN: "degrade, don't fail"): when the cache errs, requests are served
unthrottled rather than refused, and for CACHE_RETRY_SECONDS the cache is not asked at all, so a
stopped or frozen Redis costs one request per process and interval its connect timeout, not every
request. One warning per interval says so in the log.
"""

import logging
import math
import sys
import threading
import time

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework import exceptions
from rest_framework.throttling import SimpleRateThrottle

from orchestrator.client_address import client_address
from orchestrator.redis_script import RedisScript
from runs.models import ApiKey

logger = logging.getLogger(__name__)



def cache_errors():
    """What a cache backend raises when its server is away: redis-py's connection and timeout errors,
    or the file cache's disk errors. redis-py is looked up, not imported (~6 MiB a process): one that
    has not loaded it (no Redis configured) cannot have met its errors."""
    redis_exceptions = sys.modules.get("redis.exceptions")
    return (redis_exceptions.RedisError, OSError) if redis_exceptions else (OSError,)


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
        except cache_errors() as exc:
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


# An expensive endpoint's requests within the window, newest first, as a Redis list that one script
# trims, counts and appends to: SimpleRateThrottle's own decision, but DRF keeps the log as one pickled
# list that every request reads and writes back whole, two round trips whose cost grows with the log
# (at 1,500 requests in the window, 0.6 ms of a run creation's 1.2 ms; issue 16). Here: one round trip
# and O(1) work per request, and two requests at once no longer overwrite each other's entry.
# ARGV: now, the cutoff (entries at or before it have left the window), the rate's count, its seconds.
SLIDING_LOG = """
local key, cutoff, limit = KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3])
while true do
  local last = redis.call('LINDEX', key, -1)
  if not last or tonumber(last) > cutoff then break end
  redis.call('RPOP', key)
end
local count = redis.call('LLEN', key)
if count >= limit then
  return {0, count, redis.call('LINDEX', key, -1)}
end
redis.call('LPUSH', key, ARGV[1])
redis.call('EXPIRE', key, ARGV[4])
return {1, count + 1}
"""
_SLIDING_LOG_SCRIPT = RedisScript(SLIDING_LOG)


class ExpensiveEndpointThrottle(SimpleRateThrottle):
    """Limits the endpoints that scan many rows or create runs, per API key (or user, or address).

    A view lists it in `throttle_classes`; with `expensive_actions` only those of its actions count.
    On Redis the log of requests is a list kept by SLIDING_LOG; on another cache, DRF's pickled list.
    """

    scope = "expensive"
    setting = "THROTTLE_EXPENSIVE_RATE"

    def allow_request(self, request, view):
        actions = getattr(view, "expensive_actions", None)
        if actions is not None and getattr(view, "action", None) not in actions:
            return True
        backend = caches["default"]
        if isinstance(backend, RedisCache):
            return counter_cache.call(lambda: self._count_on_redis(backend, request, view), fallback=True)
        count_and_decide = super().allow_request
        return counter_cache.call(lambda: count_and_decide(request, view), fallback=True)

    def _count_on_redis(self, backend, request, view):
        """SimpleRateThrottle.allow_request's decision, on the log SLIDING_LOG keeps."""
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        # One client per cache backend (each thread has its own): get_client builds a new one, with
        # its ~150 response callbacks, on every call.
        client = backend.__dict__.get("_sliding_log_client")
        if client is None:
            client = backend.__dict__["_sliding_log_client"] = backend._cache.get_client(write=True)
        allowed, self.count, *oldest = _SLIDING_LOG_SCRIPT(
            keys=[backend.make_and_validate_key(f"{self.key}_log")],
            args=[repr(self.now), repr(self.now - self.duration), self.num_requests, self.duration], client=client)
        self.oldest = float(oldest[0]) if oldest and oldest[0] is not None else None
        return bool(allowed)

    def wait(self):
        """SimpleRateThrottle.wait, from the count and the oldest entry the script answered."""
        if not hasattr(self, "count"):
            return super().wait()
        remaining = self.duration - (self.now - self.oldest) if self.oldest is not None else self.duration
        available = self.num_requests - self.count + 1
        return None if available <= 0 else remaining / float(available)

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
            ident = client_address(request)  # not DRF's get_ident, which believes any X-Forwarded-For
        return f"throttle_{self.scope}_{ident}"


class FailureCounter:
    """Failures of one identity (an address, a username) within a window that its first failure starts.

    The window's end is kept beside the count, so that 429s say how long is left (Retry-After) and
    a backend without a native incr (the file cache rewrites the key with its 300 s default
    timeout) is brought back to the window. Like every throttle here, it fails open.
    """

    def __init__(self, scope, ident, rate):
        self.limit, self.window = _parse_rate(rate)
        self.key = f"throttle_{scope}_{ident}"
        self.until_key = f"{self.key}_until"

    def wait(self):
        """Seconds before this identity may try again: 0 while it is under the rate (or the cache is away)."""
        if not self.limit:
            return 0
        found = counter_cache.call(lambda: cache.get_many([self.key, self.until_key]), fallback={})
        if (found.get(self.key) or 0) < self.limit:
            return 0
        until = found.get(self.until_key) or time.time() + self.window
        return max(1, math.ceil(until - time.time()))

    def record(self):
        """Count one failure."""
        if self.limit:
            counter_cache.call(self._count, fallback=None)

    def clear(self):
        """Forget the failures (a person who then signed in with the right password)."""
        if self.limit:
            counter_cache.call(lambda: cache.delete_many([self.key, self.until_key]), fallback=None)

    def _count(self):
        now = time.time()
        # add() starts the window only once; incr() after it is atomic on Redis and in locmem.
        cache.add(self.until_key, now + self.window, timeout=self.window)
        cache.add(self.key, 0, timeout=self.window)
        try:
            cache.incr(self.key)
        except ValueError:  # expired between add and incr
            cache.set(self.key, 1, timeout=self.window)
        until = cache.get(self.until_key) or now + self.window
        cache.touch(self.key, max(1, math.ceil(until - now)))


class FailedAuthenticationLimiter:
    """Failed key checks per client address; past the rate, the address's unknown keys get 429.

    Only failures count and only failures are refused: a request whose key is valid is served even
    while its address is throttled, so a client sending bad keys from behind the same proxy or NAT
    never locks out the agents there. Finding a key is one indexed lookup of its SHA-256 (no bcrypt),
    as cheap as the throttle's own check, so looking first saves nothing worth a lock-out; and with
    256-bit random keys the limit is a brake on noise and scanning, not what keeps a key from being
    guessed.
    """

    def __init__(self, request):
        self.address = client_address(request)
        self.failures = FailureCounter("failed_auth", self.address, settings.ORCHESTRATOR["THROTTLE_FAILED_AUTH_RATE"])

    def refuse(self, message):
        """Raise Throttled when this address failed too often within the window, else count and raise 401."""
        wait = self.failures.wait()
        if wait:
            raise exceptions.Throttled(wait=wait, detail="Too many failed authentications from this address.")
        self.failures.record()
        raise exceptions.AuthenticationFailed(message)
