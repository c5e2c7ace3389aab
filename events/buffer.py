"""Where events wait between their change's commit and the persister.

Two sources, read by the persister in turn:
- the Redis stream `EVENTS_STREAM_KEY` (when REDIS_URL is set): XADD after commit, read through a
  consumer group so that an entry read but not yet stored is read again after a crash (XREADGROUP
  from 0 returns this consumer's unacknowledged entries first), acknowledged and deleted only after
  the persister's transaction committed. Redis's own durability decides what survives a Redis
  restart: with `appendonly yes` nothing is lost (README, "Events").
- the PendingEvent table: the embedded mode's buffer, and where events go while Redis cannot take
  them. Its rows are deleted in the same transaction that stores them: exactly once.

A failed Redis write makes this process skip Redis for REDIS_RETRY_SECONDS, so a stopped or frozen
Redis costs at most one short timeout per interval, never one per change.
"""

import json
import logging
import time

from django.conf import settings
from django.db import transaction

from events.emit import decoded, encoded
from orchestrator.streams import Batch, ConsumerGroupStream

logger = logging.getLogger(__name__)

GROUP = "persister"
CONSUMER = "persister"
REDIS_RETRY_SECONDS = 5.0

_client = None
_client_url = None  # the REDIS_URL _client was made for
_redis_down_until = 0.0


def stream_key():
    return settings.ORCHESTRATOR["EVENTS_STREAM_KEY"]


def redis_client():
    """The process's Redis client for events, or None without REDIS_URL."""
    global _client, _client_url
    if not settings.REDIS_URL:
        return None
    if _client is None or _client_url != settings.REDIS_URL:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeout = settings.ORCHESTRATOR["EVENTS_REDIS_TIMEOUT_SECONDS"]
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout,
                                       retry=Retry(NoBackoff(), 0))
        # Remembered beside the client, not in its connection kwargs: redis-py passes those to
        # every new connection, which refuses an unknown one (so no command ever reached Redis).
        _client_url = settings.REDIS_URL
    return _client


def reset():
    """Forget the client and any Redis outage (tests; a new REDIS_URL)."""
    global _client, _client_url, _redis_down_until
    _client, _client_url, _redis_down_until = None, None, 0.0


def usable_redis_client():
    """The Redis client, unless there is none or it failed less than REDIS_RETRY_SECONDS ago."""
    client = redis_client()
    if client is not None and time.monotonic() >= _redis_down_until:
        return client
    return None


def redis_failed():
    """Skip Redis in this process for REDIS_RETRY_SECONDS (every stream of it: events and logs)."""
    global _redis_down_until
    _redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS


def push(events):
    """Buffer `events`: the Redis stream when it takes them, else the table."""
    client = usable_redis_client()
    if client is not None:
        try:
            _stream().add(client, [encoded(event) for event in events],
                          maxlen=settings.ORCHESTRATOR["EVENTS_STREAM_MAX_LENGTH"])
            return "redis"
        except Exception as exc:
            redis_failed()
            logger.warning("Redis did not take %d events (%s); they wait in the database instead.", len(events), exc)
    push_to_table(events)
    return "table"


def insert_pending(connection, events):
    """PendingEvent rows for `events` on `connection`, in its current transaction: one executemany,
    no model instances (this runs inside state changes)."""
    from django.utils import timezone

    from events.models import PendingEvent

    created = connection.ops.adapt_datetimefield_value(timezone.now())
    rows = [(encoded(event, allow_nan=False), created) for event in events]
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {PendingEvent._meta.db_table} (body, created) VALUES (%s, %s)", rows)


def push_to_table(events):
    from django.db import DataError, IntegrityError

    from events.models import PendingEvent

    try:
        with transaction.atomic():
            PendingEvent.objects.bulk_create([PendingEvent(body=decoded(event)) for event in events])
        return
    except (DataError, IntegrityError, ValueError):
        pass
    # The database refused one (jsonb: a NUL character, a lone surrogate; NaN anywhere): it must not
    # take the other events of its change with it. Each goes alone, made safe; what is still refused
    # is dropped.
    from events.store import jsonb_safe

    for event in map(decoded, events):
        try:
            with transaction.atomic():
                PendingEvent.objects.create(body=json.loads(jsonb_safe(json.dumps(event, ensure_ascii=False))))
        except (DataError, IntegrityError, ValueError) as exc:
            logger.error("Dropped event %s (%s): the database refused it (%s).", event.get("id"), event.get("name"),
                         exc)


def _stream():
    return ConsumerGroupStream(stream_key, GROUP, CONSUMER)


def read_table(limit):
    """The oldest pending rows, locked for this transaction (call inside one)."""
    from events.models import PendingEvent

    rows = list(PendingEvent.objects.select_for_update(skip_locked=True).order_by("pk").values_list("pk", "body")[:limit])
    return Batch("table", [body for _, body in rows], [pk for pk, _ in rows])


def ack_table(batch):
    """Delete the batch's rows: call in the transaction that stored them."""
    from events.models import PendingEvent

    PendingEvent.objects.filter(pk__in=batch.ids).delete()


def read_stream(limit):
    """The next entries for the persister: its unacknowledged ones first, then new ones."""
    return _stream().read(redis_client(), limit)


def ack_stream(batch):
    """Acknowledge and delete the entries (after their transaction committed)."""
    _stream().ack(redis_client(), batch.ids)


def stream_length():
    client = redis_client()
    return client.xlen(stream_key()) if client is not None else 0
