"""The log persister: moves accepted log lines from the Redis stream into the logs table, at least once.

Each transaction stores up to LOG_PERSISTER_BATCH_SIZE stream entries (one per accepted batch, up
to AGENT_LOG_BATCH_MAX_LINES lines each) with one `COPY` (runs/logs/ingest.py), deduplicated by the
lines' ingest ids (entries read for the first time are copied straight in: they cannot be there
yet); the entries are acknowledged only after it committed. A pass is bounded:
at most LOG_PERSISTER_MAX_BATCHES transactions. Two copies at once read the same pending entries
and store them once (ON CONFLICT on ingest_id). Without REDIS_URL there is nothing to move: logs
are written in the request (embedded mode).
"""

from django.conf import settings
from django.db import transaction

from events import buffer
from runs.logs import ingest
from services import registry


@registry.register("log-persister", "LOG_PERSISTER_LOOP_SECONDS",
                   "Moves accepted log lines from the Redis stream into the logs table (COPY, batched).")
def run_once(now=None):
    summary = {"stored": 0, "skipped": 0}
    client = buffer.redis_client()
    if client is None:
        return summary
    for _ in range(settings.ORCHESTRATOR["LOG_PERSISTER_MAX_BATCHES"]):
        batch = ingest.STREAM.read(client, settings.ORCHESTRATOR["LOG_PERSISTER_BATCH_SIZE"], flatten=True)
        if not batch.ids:
            break
        with transaction.atomic():
            stored = ingest.store(batch.items, fresh=not batch.redelivered)
        ingest.STREAM.ack(client, batch.ids)
        summary["stored"] += stored
        summary["skipped"] += len(batch.items) - stored
    return summary
