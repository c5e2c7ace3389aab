"""Events: what happened, to which resource. Automations, the feed and the stream read them.

`Event` is the stored event. On PostgreSQL its table is partitioned by day on `occurred`
(events/partitions.py), so its real primary key is (id, occurred): the model's `id` is unique
because it is a UUID made where the event happened, and a redelivered event has the same id and
the same `occurred`, which is how the persister drops duplicates. `PendingEvent` is the buffer of
the embedded mode (no REDIS_URL) and the fallback when Redis cannot take an event.
"""

import uuid

from django.db import models
from django.utils import timezone

from runs.models import Workspace


class Event(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The database cascades a workspace's deletion (ON DELETE CASCADE in the table's DDL): an ORM
    # cascade would load every event of the workspace first.
    workspace = models.ForeignKey(Workspace, on_delete=models.DO_NOTHING, db_constraint=False,
                                  related_name="events")
    occurred = models.DateTimeField(default=timezone.now, help_text="When it happened, where it happened.")
    received = models.DateTimeField(default=timezone.now, help_text="When the persister stored it.")
    name = models.CharField(max_length=200, help_text="e.g. flow-run.state.crashed, work-queue.unhealthy")
    resource = models.JSONField(default=dict, help_text='{"kind": "flow-run", "id": "…"}')
    related = models.JSONField(default=list, blank=True, help_text='[{"kind": "flow", "id": "…"}, …]')
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "events_event"
        ordering = ["-occurred"]
        indexes = [
            models.Index(fields=["workspace", "occurred"], name="event_ws_occurred"),
            models.Index(fields=["workspace", "name", "occurred"], name="event_ws_name_occurred"),
            models.Index(fields=["received"], name="event_received"),
        ]

    def __str__(self):
        return f"{self.name} at {self.occurred:%Y-%m-%d %H:%M:%S}"

    @property
    def resource_kind(self):
        return (self.resource or {}).get("kind", "")

    @property
    def resource_id(self):
        return str((self.resource or {}).get("id", ""))

    def as_dict(self):
        """The event as the stream and the API give it."""
        return {"id": str(self.id), "occurred": self.occurred.isoformat(), "received": self.received.isoformat(),
                "name": self.name, "resource": self.resource, "related": self.related, "payload": self.payload}


class PendingEvent(models.Model):
    """An event written after its change committed, waiting for the persister (embedded mode, or
    Redis could not take it)."""

    body = models.JSONField()
    created = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"pending {self.body.get('name', '?')}"
