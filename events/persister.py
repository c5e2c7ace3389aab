"""The event persister: moves buffered events into the Event table in batches, at least once.

Each batch is stored in one transaction (deduplicated by event id, events/store.py), handed in the
same transaction to the consumers that react on ingest (automations' reactive triggers), and only
then acknowledged: table rows are deleted in that transaction, stream entries acknowledged after
it commits. A crash anywhere in between re-reads the batch, and its stored events are not stored
or reacted to twice. A pass is bounded: at most EVENT_PERSISTER_MAX_BATCHES batches of
EVENT_PERSISTER_BATCH_SIZE events per source.
"""

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from events import buffer, store
from services import registry

logger = logging.getLogger(__name__)

# Functions called with (events, now) inside the transaction that stored them; registered by the
# apps that react to events (automations). A consumer that raises loses its own writes, not the events.
consumers = []


def add_consumer(function):
    if function not in consumers:
        consumers.append(function)
    return function


def _config(key):
    return settings.ORCHESTRATOR[key]


def _store(raw_events):
    now = timezone.now()
    new = store.persist(raw_events, now)
    for consumer in list(consumers):
        try:
            with transaction.atomic():
                consumer(new, now)
        except Exception:
            logger.exception("Event consumer %s failed on a batch of %d events; the events are stored.",
                             getattr(consumer, "__qualname__", consumer), len(new))
    return len(new), len(raw_events) - len(new)


def drain_table(summary, batches):
    for _ in range(batches):
        with transaction.atomic():
            batch = buffer.read_table(_config("EVENT_PERSISTER_BATCH_SIZE"))
            if not batch.ids:
                return
            stored, skipped = _store(batch.items)
            buffer.ack_table(batch)
        summary["stored"] += stored
        summary["skipped"] += skipped


def drain_stream(summary, batches):
    for _ in range(batches):
        batch = buffer.read_stream(_config("EVENT_PERSISTER_BATCH_SIZE"))
        if not batch.ids:
            return
        with transaction.atomic():
            stored, skipped = _store(batch.items)
        buffer.ack_stream(batch)
        summary["stored"] += stored
        summary["skipped"] += skipped


@registry.register("event-persister", "EVENT_PERSISTER_LOOP_SECONDS",
                   "Moves buffered events (Redis stream, pending table) into the events table.")
def run_once(now=None):
    summary = {"stored": 0, "skipped": 0}
    batches = _config("EVENT_PERSISTER_MAX_BATCHES")
    drain_table(summary, batches)
    if buffer.redis_client() is not None:
        # A Redis outage fails the pass (Towel records it, the health page shows it) after the
        # table, where emitters put their events meanwhile, was drained.
        drain_stream(summary, batches)
    return summary
