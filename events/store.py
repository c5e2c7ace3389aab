"""Storing buffered events: validated, deduplicated by id, in one statement per batch."""

import json
import logging
import re
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db import DataError, IntegrityError, connection, transaction
from django.db.models.base import ModelState
from django.utils import timezone

from events.models import Event

logger = logging.getLogger(__name__)

NAME_MAX = 200


def _event(**fields):
    """An unsaved Event without Model.__init__'s per-field work, which cost a third of a pass
    (tens of µs an event, thousands an event batch): the fields are set as __init__ would."""
    event = Event.__new__(Event)
    event._state = ModelState()
    event.__dict__.update(fields)
    return event


def _clean(raw):
    """An Event (unsaved) from a buffered dict, or None when it is not an event. A poison entry must
    not hold up the stream: it is logged and dropped."""
    try:
        occurred = datetime.fromisoformat(raw["occurred"])
        if timezone.is_naive(occurred):
            occurred = occurred.replace(tzinfo=dt_timezone.utc)  # django.utils.timezone.utc is gone since 5.0
        event = _event(id=uuid.UUID(str(raw["id"])), workspace_id=int(raw["workspace_id"]), occurred=occurred,
                       name=str(raw["name"])[:NAME_MAX], resource=raw.get("resource") or {},
                       related=raw.get("related") or [], payload=raw.get("payload") or {})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        logger.error("Dropped a buffered event that is not one (%s): %.300r", exc, raw)
        return None
    if not isinstance(event.resource, dict) or not isinstance(event.related, list) or not isinstance(event.payload, dict):
        logger.error("Dropped a buffered event with a malformed resource, related or payload: %.300r", raw)
        return None
    return event


def persist(raw_events, now=None):
    """Store the events of a batch that are new; returns them (Event instances), in batch order.

    Call inside a transaction. Events of a workspace that no longer exists are dropped; an event
    already stored (a redelivery) is not stored again and not returned.
    """
    now = now or timezone.now()
    events, seen = [], set()
    for raw in raw_events:
        event = _clean(raw) if isinstance(raw, dict) else None
        if event is not None and event.id not in seen:
            seen.add(event.id)
            event.received = now
            events.append(event)
    if not events:
        return []
    new_ids = _insert_postgresql(events, now) if connection.vendor == "postgresql" else _insert_other(events)
    return [event for event in events if event.id in new_ids]


_INSERT = """
INSERT INTO events_event (id, workspace_id, occurred, received, name, resource, related, payload)
SELECT r.id, r.workspace_id, r.occurred, %s, r.name, r.resource, r.related, r.payload
FROM jsonb_to_recordset(%s::jsonb) AS r(id uuid, workspace_id bigint, occurred timestamptz, name text,
                                         resource jsonb, related jsonb, payload jsonb)
WHERE EXISTS (SELECT 1 FROM runs_workspace w WHERE w.id = r.workspace_id)
ON CONFLICT (id, occurred) DO NOTHING
RETURNING id
"""


# An escaped NUL (\u0000) that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def jsonb_safe(text):
    """JSON text that PostgreSQL's jsonb takes: it refuses NUL characters (valid JSON) and lone
    UTF-16 surrogates (which json.loads lets through); both become U+FFFD. A literal backslash
    followed by "u0000" is left alone. `text` is json.dumps output with ensure_ascii=False."""
    if "\\u0000" in text:
        text = _ESCAPED_NUL.sub(lambda m: m[1] + "\\ufffd", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _insert_rows(events, now):
    rows = [{"id": str(e.id), "workspace_id": e.workspace_id, "occurred": e.occurred.isoformat(), "name": e.name,
             "resource": e.resource, "related": e.related, "payload": e.payload} for e in events]
    # allow_nan=False: NaN and Infinity are not JSON, and jsonb refuses them (the event is dropped).
    body = jsonb_safe(json.dumps(rows, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
    with connection.cursor() as cursor:
        cursor.execute(_INSERT, [now, body])
        return {row[0] if isinstance(row[0], uuid.UUID) else uuid.UUID(str(row[0])) for row in cursor.fetchall()}


def _insert_postgresql(events, now):
    """One statement for the batch; when PostgreSQL refuses it (an event jsonb cannot hold), each
    event alone, dropping the ones it refuses: one bad event must not hold up the stream forever."""
    try:
        with transaction.atomic():
            return _insert_rows(events, now)
    except (DataError, ValueError) as exc:
        if len(events) == 1:
            logger.error("Dropped event %s (%s): the database refused it (%s).", events[0].id, events[0].name, exc)
            return set()
    new_ids = set()
    for event in events:
        new_ids |= _insert_postgresql([event], now)
    return new_ids


def _insert_other(events):
    from runs.models import Workspace

    ids = [event.id for event in events]
    stored = set(Event.objects.filter(id__in=ids).values_list("id", flat=True))
    live = set(Workspace.objects.filter(id__in={e.workspace_id for e in events}).values_list("id", flat=True))
    new = [event for event in events if event.id not in stored and event.workspace_id in live]
    return _bulk_create_or_one_by_one(new)


def _bulk_create_or_one_by_one(events):
    """SQLite refuses what is not valid JSON to it (NaN): that event is dropped, not its batch."""
    try:
        with transaction.atomic():
            Event.objects.bulk_create(events)
        return {event.id for event in events}
    except (DataError, IntegrityError, ValueError) as exc:
        if len(events) == 1:
            logger.error("Dropped event %s (%s): the database refused it (%s).", events[0].id, events[0].name, exc)
            return set()
    stored = set()
    for event in events:
        stored |= _bulk_create_or_one_by_one([event])
    return stored
