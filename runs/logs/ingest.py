"""Log ingestion on its own path, so that a log flood never slows state changes.

An agent's accepted batch (runs/api/agents.py) becomes rows here and goes, in one round trip, to
the Redis stream LOG_STREAM_KEY as one entry (orchestrator/streams.py, the events' consumer-group
machinery). The request writes nothing to the database: the log persister (services/log_persister.py)
moves entries in batches into the logs table with one `COPY` per transaction, deduplicated by each
line's `ingest_id`, and acknowledges the entries only after that transaction committed. So a line the
API accepted (201) is stored at least once and kept once:

- the persister dies before its commit: the entries stay pending and are read again;
- it dies between commit and acknowledgement: they are read again, and `ON CONFLICT (ingest_id)`
  drops the lines already stored;
- Redis restarts: what Redis kept survives (with `appendonly yes` and `appendfsync always`,
  everything it acknowledged; with the default `everysec`, a Redis *crash*, not an orderly restart,
  may lose up to the last second of accepted lines, as for events);
- Redis does not answer: the batch is written to the database in the request (the old path, one
  statement), and Redis is skipped for a few seconds (events/buffer.py's circuit breaker);
- the persister is far behind (the stream holds LOG_STREAM_MAX_LENGTH entries): the same, for a few
  seconds at a time. The stream is never trimmed: an accepted line is never dropped to make room.

Embedded mode (no REDIS_URL) writes in the request, as before: SQLite has one writer, and a buffer
table in the same database would only write every line twice.

A row is a list, compact in the stream: [ingest_id, workspace_id, flow_run_id, task_run_id, level,
message, timestamp (ISO 8601), source].
"""

import json
import logging
import os
import time
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction

from orchestrator.streams import ConsumerGroupStream

logger = logging.getLogger(__name__)

STREAM = ConsumerGroupStream(lambda: settings.ORCHESTRATOR["LOG_STREAM_KEY"], "log-persister", "log-persister")
FULL_RETRY_SECONDS = 5.0
_stream_full_until = 0.0


def ingest_ids(count):
    """`count` time-ordered UUIDs (version 7 layout: 48 bits of milliseconds first) for one batch.

    Consecutive ids of one batch share a random base; time order keeps the unique index's inserts
    at its right edge instead of all over it, as random UUIDs would."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    base = (millis << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    base &= ~0xFFFF  # room for the line's index (batches are far below 65,536 lines)
    if count > 0xFFFF:
        raise ValueError(f"a batch of {count} lines is over the 65,535 that one base numbers")
    # The index is the last four hex digits: one UUID formatted, the others are its prefix and a count.
    prefix = str(uuid.UUID(int=base))[:-4]
    return [f"{prefix}{i:04x}" for i in range(count)]


def row(ingest_id, workspace_id, flow_run_id, task_run_id, level, message, timestamp, source="agent"):
    """One accepted line as the stream carries it."""
    return [ingest_id, int(workspace_id), str(flow_run_id), str(task_run_id) if task_run_id else None, int(level),
            message, timestamp.isoformat(), source]


def batch_rows(workspace_id, flow_run_id, lines, now, source="agent"):
    """`row`s of one run's accepted lines (dicts with level, message, and maybe task_run_id and
    timestamp; a line without a timestamp gets `now`), with what they share formatted once."""
    ids = ingest_ids(len(lines))
    workspace_id, flow_run_id, stamp = int(workspace_id), str(flow_run_id), now.isoformat()
    return [[ids[i], workspace_id, flow_run_id, str(task) if (task := line.get("task_run_id")) else None,
             int(line["level"]), line["message"], moment.isoformat() if (moment := line.get("timestamp")) else stamp,
             source]
            for i, line in enumerate(lines)]


def accept(rows):
    """Hand accepted rows to the persister's stream; into the database at once when the stream cannot
    take them. Returns where they went: "redis" or "database"."""
    global _stream_full_until
    from events import buffer

    if not rows:
        return "database"
    client = buffer.usable_redis_client()
    if client is not None and time.monotonic() >= _stream_full_until:
        try:
            length = STREAM.add(client, [json.dumps(rows, separators=(",", ":"), ensure_ascii=False)])
        except Exception as exc:  # noqa: BLE001 - any Redis failure: the database path, below
            buffer.redis_failed()
            logger.warning("Redis did not take %d log lines (%s); they are written to the database.", len(rows), exc)
        else:
            if length > settings.ORCHESTRATOR["LOG_STREAM_MAX_LENGTH"]:
                # Behind: stop adding for a while (this batch is in; it is never trimmed).
                _stream_full_until = time.monotonic() + FULL_RETRY_SECONDS
                logger.warning("The log stream holds %d batches (ORCHESTRATOR_LOG_STREAM_MAX_LENGTH): log batches "
                               "are written to the database for %ss. Is the log persister running?",
                               length, FULL_RETRY_SECONDS)
            return "redis"
    with transaction.atomic():
        store(rows)
    return "database"


def reset():
    """Forget that the stream was full (tests)."""
    global _stream_full_until
    _stream_full_until = 0.0


def _clean(raw):
    """A row's values typed, or None (logged) when it is not a row: a poison entry must not hold up
    the stream."""
    try:
        ingest_id, workspace_id, flow_run_id, task_run_id, level, message, timestamp, source = raw
        moment = datetime.fromisoformat(timestamp)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt_timezone.utc)
        return [uuid.UUID(ingest_id), int(workspace_id), uuid.UUID(flow_run_id),
                uuid.UUID(task_run_id) if task_run_id else None, int(level), str(message).replace("\x00", "\ufffd"),
                moment, str(source)[:24]]
    except (TypeError, ValueError, AttributeError) as exc:
        logger.error("Dropped a buffered log line that is not one (%s): %.300r", exc, raw)
        return None


def store(raw_rows, fresh=False):
    """Store the rows not stored yet (by ingest_id) whose run (and task run) still exist; returns how
    many were new. Call inside a transaction.

    `fresh`: the rows were never handed to a store before (stream entries delivered for the first
    time). On PostgreSQL they are then copied straight into the logs table, without the staging
    table, the EXISTS checks and ON CONFLICT, which cost PostgreSQL about as much again; should a
    line be there already or its run be gone (a unique or foreign-key violation, checked before
    going on), the batch takes the careful path instead."""
    rows = [r for r in (_clean(raw) for raw in raw_rows) if r is not None]
    if not rows:
        return 0
    if connection.vendor == "postgresql":
        if fresh:
            try:
                with transaction.atomic():
                    return _copy_straight(rows)
            except (IntegrityError, DataError, ValueError):
                pass  # rolled back to the savepoint: the careful path below decides row by row
        return _store_postgresql(rows)
    return _store_other(rows)


_COLUMNS = "ingest_id, workspace_id, flow_run_id, task_run_id, level, message, \"timestamp\", source"
_TEMP = """
CREATE TEMP TABLE IF NOT EXISTS log_ingest (
    ord integer, ingest_id uuid, workspace_id bigint, flow_run_id uuid, task_run_id uuid, level smallint,
    message text, "timestamp" timestamptz, source varchar(24)
) ON COMMIT DELETE ROWS
"""
_INSERT = f"""
INSERT INTO runs_log ({_COLUMNS})
SELECT {", ".join("i." + c.strip() for c in _COLUMNS.split(","))} FROM log_ingest i
WHERE EXISTS (SELECT 1 FROM runs_flowrun r WHERE r.id = i.flow_run_id AND r.workspace_id = i.workspace_id)
  AND (i.task_run_id IS NULL OR EXISTS (SELECT 1 FROM runs_taskrun t WHERE t.id = i.task_run_id))
ORDER BY i.ord
ON CONFLICT (ingest_id) DO NOTHING
"""


def _copy_in(cursor, target, rows):
    """COPY `rows` into `target` (a table and its columns) through psycopg's own cursor: Django's has
    no COPY. Call under connection.wrap_database_errors, which makes psycopg's errors Django's."""
    with cursor.cursor.copy(f"COPY {target} FROM STDIN") as copy:
        for values in rows:
            copy.write_row(values)


def _copy(rows):
    with connection.cursor() as cursor, connection.wrap_database_errors:
        cursor.execute(_TEMP)
        _copy_in(cursor, f"log_ingest (ord, {_COLUMNS})", ([index, *values] for index, values in enumerate(rows)))
        cursor.execute(_INSERT)
        stored = cursor.rowcount
        # Emptied at once, not only at commit: one transaction may store several times (a refused
        # batch row by row).
        cursor.execute("DELETE FROM log_ingest")
        return stored


def _copy_straight(rows):
    with connection.cursor() as cursor, connection.wrap_database_errors:
        _copy_in(cursor, f"runs_log ({_COLUMNS})", rows)
        # The foreign keys are deferred to the commit: check them here, inside the savepoint.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    return len(rows)


def _store_postgresql(rows):
    """One COPY and one INSERT … SELECT for the batch; when PostgreSQL refuses it, each row alone,
    dropping the ones it refuses."""
    try:
        with transaction.atomic():
            return _copy(rows)
    except (DataError, ValueError) as exc:
        if len(rows) == 1:
            logger.error("Dropped log line %s: the database refused it (%s).", rows[0][0], exc)
            return 0
    return sum(_store_postgresql([values]) for values in rows)


def _store_other(rows):
    from runs.models import FlowRun, Log, TaskRun

    stored = 0
    for start in range(0, len(rows), 5000):
        chunk = rows[start:start + 5000]
        runs = set(FlowRun.objects.filter(pk__in={r[2] for r in chunk}).values_list("pk", "workspace_id"))
        task_ids = {r[3] for r in chunk if r[3]}
        tasks = set(TaskRun.objects.filter(pk__in=task_ids).values_list("pk", flat=True)) if task_ids else set()
        have = set(Log.objects.filter(ingest_id__in=[r[0] for r in chunk]).values_list("ingest_id", flat=True))
        new = [Log(ingest_id=i, workspace_id=w, flow_run_id=r, task_run_id=t, level=lv, message=m, timestamp=ts,
                   source=s)
               for i, w, r, t, lv, m, ts, s in chunk
               if i not in have and (r, w) in runs and (t is None or t in tasks)]
        # ignore_conflicts: two persisters at once (INSERT OR IGNORE on the unique ingest_id).
        Log.objects.bulk_create(new, batch_size=500, ignore_conflicts=True)
        stored += len(new)
    return stored


def stream_length():
    from events import buffer

    return STREAM.length(buffer.redis_client())
