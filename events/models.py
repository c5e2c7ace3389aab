"""Events: what happened, to which resource. Automations, the feed and the stream read them.

`Event` is the stored event. On PostgreSQL its table is partitioned by day on `occurred`
(events/partitions.py), so its real primary key is (id, occurred): the model's `id` is unique
because it is a UUID made where the event happened, and a redelivered event has the same id and
the same `occurred`, which is how the persister drops duplicates. `PendingEvent` is the buffer of
the embedded mode (no REDIS_URL) and the fallback when Redis cannot take an event.
"""

import secrets
import uuid

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from runs.models import Workspace
from runs.models.validators import SECRET_NAME_PATTERN


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


def new_webhook_slug():
    """The secret part of a webhook's URL: 43 URL-safe characters (256 random bits)."""
    return secrets.token_urlsafe(32)


class IncomingWebhook(models.Model):
    """A URL (`/hooks/<slug>`) that turns what another system POSTs into an event of its workspace.

    The slug is the credential: unguessable, shown to the workspace's admins only. With
    `secret_name`, the body must also carry an HMAC-SHA256 signature made with that workspace
    secret (`X-Orchestrator-Signature: sha256=<hex>`). `template` maps the body to the event
    (events/webhooks.py); empty, the event is `webhook.<name>` with the body as its payload.
    """

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="incoming_webhooks")
    name = models.CharField(max_length=100, validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                            "Letters, digits, '.', '-' and '_', first a letter or digit.")],
                            help_text="Names the webhook, and its events by default (webhook.<name>).")
    slug = models.CharField(max_length=64, unique=True, default=new_webhook_slug, editable=False,
                            help_text="The secret token of its URL, /hooks/<slug>.")
    enabled = models.BooleanField(default=True, help_text="A disabled webhook answers 404.")
    secret_name = models.CharField(max_length=100, blank=True, validators=[RegexValidator(SECRET_NAME_PATTERN)],
                                   help_text="A workspace secret: when set, bodies must be signed with it "
                                             "(X-Orchestrator-Signature: sha256=<HMAC-SHA256 hex of the body>).")
    template = models.JSONField(default=dict, blank=True,
                                help_text='How the body becomes an event: {"name": "webhook.{{ body.kind }}", '
                                          '"resource": {"kind": "deploy", "id": "{{ body.id }}"}, '
                                          '"payload": "{{ body }}"}. Empty: webhook.<name> with the body.')
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="incoming_webhook_name_unique")]

    def __str__(self):
        return self.name

    @property
    def path(self):
        return f"/hooks/{self.slug}"

    def clean(self):
        from django.core.exceptions import ValidationError

        from events.webhooks import TemplateError, check_template

        from runs.models import Secret

        try:
            check_template(self.template)
        except TemplateError as exc:
            raise ValidationError({"template": str(exc)}) from None
        if self.secret_name and self.workspace_id and not Secret.objects.filter(
                workspace_id=self.workspace_id, name=self.secret_name).exists():
            raise ValidationError({"secret_name": f"This workspace has no secret named {self.secret_name}."})
