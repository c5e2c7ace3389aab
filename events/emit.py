"""Emitting events: never slows or fails the change that caused them.

A caller builds events with `make(...)` and hands them to `emit(...)` inside its transaction. They
leave after the transaction commits (`on_commit`): a rolled-back change emits nothing, and the
state UPDATE's transaction never waits on the event store. After commit they go to the buffer
(events/buffer.py): the Redis stream when REDIS_URL is set, else (or when Redis cannot take them)
the PendingEvent table. With Redis they are sent from a background thread (events/sender.py), so
the committing request does not wait on Redis either. The event persister (events/persister.py)
moves them into the Event table.
"""

import functools
import json
import logging
import uuid

from django.conf import settings
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)


def enabled():
    return settings.ORCHESTRATOR["EVENTS_ENABLED"]


def resource(kind, id, name=None):
    """A resource reference: {"kind": "flow-run", "id": "…"} (and its name when it has one)."""
    ref = {"kind": kind, "id": str(id)}
    if name:
        ref["name"] = str(name)
    return ref


def make(workspace_id, name, resource_, *, related=(), payload=None, occurred=None, id=None):
    """One event as the buffer carries it: plain JSON, the id made here so redelivery is harmless."""
    return {
        "id": str(id or uuid.uuid4()),
        "workspace_id": int(workspace_id),
        "occurred": (occurred or timezone.now()).isoformat(),
        "name": name,
        "resource": resource_,
        "related": [ref for ref in related if ref],
        "payload": payload or {},
    }


class Encoded(str):
    """An event already encoded as its JSON text, with exactly what `make` would put in it, made by
    the database in the statement of the change it tells of (runs/hot_sql.py's claim: 200 events
    built and encoded in Python were a fifth of a claim's CPU). The buffer takes the text as it is."""


def encoded(event, *, allow_nan=True):
    """The event's compact JSON text (`allow_nan` False: a NaN or infinity is a ValueError, as jsonb
    would refuse it; the database's own texts never hold one)."""
    return event if isinstance(event, Encoded) else json.dumps(event, separators=(",", ":"), allow_nan=allow_nan)


def decoded(event):
    """The event as a dict."""
    return json.loads(event) if isinstance(event, Encoded) else event


def emit(events, *, using=None):
    """Send `events` (from `make`) once the current transaction commits; at once outside one.

    Never raises: an event that cannot be buffered is logged, and the change stands.
    """
    events = [event for event in events if event]
    if not events or not enabled():
        return
    if not settings.REDIS_URL and _write_with_the_change(events, using):
        return
    transaction.on_commit(functools.partial(_push, events), using=using, robust=True)


def _write_with_the_change(events, using):
    """The embedded mode (no Redis): the events' buffer rows are written in the change's own
    transaction, so they commit or roll back with it, at the price of an INSERT and no extra commit
    (a commit of its own after the change cost SQLite a third of a transition). A row the database
    refuses (a NaN) must not fail the change: then they go after the commit, one by one."""
    from django.db import DatabaseError

    from events import buffer

    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        return False
    try:
        if connection.vendor == "sqlite":
            # A refused INSERT undoes only itself in SQLite: no savepoint needed around it.
            buffer.insert_pending(connection, events)
        else:  # PostgreSQL aborts the whole transaction on an error: keep it to a savepoint
            with transaction.atomic(using=using):
                buffer.insert_pending(connection, events)
        return True
    except (DatabaseError, ValueError, TypeError):
        return False


def background():
    """Whether committed events go to Redis from the sender thread (events/sender.py)."""
    return bool(settings.REDIS_URL) and settings.ORCHESTRATOR["EVENTS_SEND_IN_BACKGROUND"]


def _push(events):
    from events import buffer
    from events.sender import sender

    try:
        if background():
            sender.send(events)
        else:
            buffer.push(events)
    except Exception:
        logger.exception("Could not buffer %d events (first: %s); they are lost.", len(events),
                         decoded(events[0]).get("name"))
