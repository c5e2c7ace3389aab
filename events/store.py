"""Storing buffered events: validated, deduplicated by id, in one statement per batch."""

import json
import logging
import uuid
from datetime import datetime

from django.db import connection
from django.utils import timezone

from events.models import Event

logger = logging.getLogger(__name__)

NAME_MAX = 200


def _clean(raw):
    """An Event (unsaved) from a buffered dict, or None when it is not an event. A poison entry must
    not hold up the stream: it is logged and dropped."""
    try:
        occurred = datetime.fromisoformat(raw["occurred"])
        if timezone.is_naive(occurred):
            occurred = timezone.make_aware(occurred, timezone.utc)
        event = Event(id=uuid.UUID(str(raw["id"])), workspace_id=int(raw["workspace_id"]), occurred=occurred,
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


def _insert_postgresql(events, now):
    rows = [{"id": str(e.id), "workspace_id": e.workspace_id, "occurred": e.occurred.isoformat(), "name": e.name,
             "resource": e.resource, "related": e.related, "payload": e.payload} for e in events]
    # \u0000 is valid JSON but PostgreSQL's jsonb refuses it: a flow's message must not cost a batch.
    body = json.dumps(rows, separators=(",", ":")).replace("\\u0000", "\\ufffd")
    with connection.cursor() as cursor:
        cursor.execute(_INSERT, [now, body])
        return {row[0] if isinstance(row[0], uuid.UUID) else uuid.UUID(str(row[0])) for row in cursor.fetchall()}


def _insert_other(events):
    from runs.models import Workspace

    ids = [event.id for event in events]
    stored = set(Event.objects.filter(id__in=ids).values_list("id", flat=True))
    live = set(Workspace.objects.filter(id__in={e.workspace_id for e in events}).values_list("id", flat=True))
    new = [event for event in events if event.id not in stored and event.workspace_id in live]
    Event.objects.bulk_create(new)
    return {event.id for event in new}
