"""The partition manager: the events table's days, and its retention.

On PostgreSQL `events_event` is partitioned by range of `occurred`, one partition per UTC day
(`events_event_pYYYYMMDD`), plus a default partition for events outside every day made so far (a
webhook's event dated years back, a clock far ahead). Each pass:
- creates the partitions of yesterday through EVENT_PARTITION_DAYS_AHEAD days ahead (moving any
  rows the default partition holds for such a day into it);
- drops whole partitions older than the longest event retention of any workspace (instant, no
  vacuum debt);
- deletes, in bounded batches, the events of workspaces with a shorter retention (and old rows in
  the default partition). SQLite keeps one table and only does this last part.
Safe twice and when two copies run at once: every DDL statement runs under one advisory lock.
"""

import hashlib
import logging
import re
from datetime import datetime, time, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max

from services import registry

logger = logging.getLogger(__name__)

TABLE = "events_event"
DEFAULT_PARTITION = f"{TABLE}_default"
_NAME = re.compile(rf"^{TABLE}_p(\d{{8}})$")
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"events:partitions").digest()[:8], "big", signed=True)


def _config(key):
    return settings.ORCHESTRATOR[key]


def partition_name(day):
    return f"{TABLE}_p{day:%Y%m%d}"


def _midnight(day):
    return datetime.combine(day, time.min, tzinfo=dt_timezone.utc)


def is_partitioned():
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
                       "WHERE c.relname = %s AND c.relnamespace = to_regnamespace(current_schema())", [TABLE])
        return cursor.fetchone() is not None


def partitions(cursor):
    """The day partitions that exist: {date: name}."""
    cursor.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                   "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s "
                   "AND p.relnamespace = to_regnamespace(current_schema())", [TABLE])
    days = {}
    for (name,) in cursor.fetchall():
        match = _NAME.match(name)
        if match:
            days[datetime.strptime(match[1], "%Y%m%d").date()] = name
    return days


def create_partition(cursor, day):
    """Create the partition of `day`; rows the default partition holds for that day move into it."""
    start, end = _midnight(day), _midnight(day + timedelta(days=1))
    name = partition_name(day)
    cursor.execute(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE occurred >= %s AND occurred < %s", [start, end])
    stranded = cursor.fetchone()[0]
    if stranded:
        # PostgreSQL refuses a new partition while the default one holds rows of its range.
        cursor.execute("CREATE TEMP TABLE events_moving ON COMMIT DROP AS "
                       f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE occurred >= %s AND occurred < %s "
                       "RETURNING *) SELECT * FROM moved", [start, end])
    cursor.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)", [start, end])
    if stranded:
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM events_moving")
        cursor.execute("DROP TABLE events_moving")
    return stranded


def longest_retention_days():
    from runs.models import Workspace

    longest = Workspace.objects.aggregate(days=Max("event_retention_days"))["days"]
    return longest or _config("EVENT_RETENTION_DAYS")


def rotate(now, cursor):
    """Create the days ahead and drop the days past every workspace's retention; returns counts."""
    today = now.astimezone(dt_timezone.utc).date()
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
    existing = partitions(cursor)
    created = moved = 0
    for offset in range(-1, _config("EVENT_PARTITION_DAYS_AHEAD") + 1):
        day = today + timedelta(days=offset)
        if day not in existing:
            moved += create_partition(cursor, day)
            created += 1
    # A day is dropped once all of it is older than the longest retention.
    oldest_kept = (now - timedelta(days=longest_retention_days())).astimezone(dt_timezone.utc).date()
    dropped = []
    for day, name in sorted(existing.items()):
        if day < oldest_kept:
            cursor.execute(f"DROP TABLE {name}")
            dropped.append(name)
    return {"created": created, "moved_from_default": moved, "dropped": len(dropped)}


def delete_expired(now):
    """Delete events past their workspace's retention, in bounded batches; returns how many."""
    from events.models import Event
    from events.retention import delete_past_retention

    batch = _config("EVENT_RETENTION_BATCH_SIZE")
    return delete_past_retention(Event, "occurred", now, budget=batch * _config("EVENT_RETENTION_MAX_BATCHES"),
                                 batch=batch, raw=True)


@registry.register("partition-manager", "PARTITION_MANAGER_LOOP_SECONDS",
                   "Creates the events table's daily partitions ahead and drops those past retention.")
def run_once(now):
    summary = {}
    if is_partitioned():
        with transaction.atomic(), connection.cursor() as cursor:
            summary.update(rotate(now, cursor))
    summary["deleted"] = delete_expired(now)
    return summary
