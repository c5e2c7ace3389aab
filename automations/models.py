"""Automations: a trigger that watches a workspace's events, and the actions it takes when it fires.

- `Automation`: the trigger (JSON, validated by automations/triggers.py) and the actions (JSON list,
  validated by automations/actions.py). `default_key` marks the defaults every workspace gets.
- `TriggerBucket`: what a trigger is counting or waiting for, per automation, per part of a
  composite trigger (`path`) and per resource when the trigger counts each resource apart (`key`).
- `Firing`: one firing, with the events that caused it and what each action did.
- `Delivery`: a message to the outside (webhook, e-mail, Slack-compatible webhook), sent by the
  delivery service with retries and backoff, so a slow or failing destination never blocks the
  firing, another action, or the event persister.
"""

from django.db import models
from django.utils import timezone

from runs.models import Workspace


class Automation(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="automations")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    trigger = models.JSONField(help_text="What to watch for (see the README, Automations).")
    actions = models.JSONField(default=list, blank=True, help_text="What to do when the trigger fires, in order.")
    default_key = models.SlugField(max_length=100, blank=True,
                                   help_text="Set on the automations every new workspace gets.")
    last_fired = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="automation_name_unique")]
        indexes = [models.Index(fields=["workspace", "enabled"], name="automation_ws_enabled")]

    def __str__(self):
        return self.name


class TriggerBucket(models.Model):
    automation = models.ForeignKey(Automation, on_delete=models.CASCADE, related_name="buckets")
    path = models.CharField(max_length=20, blank=True, help_text='"" the trigger; "0", "1" the parts of a composite.')
    key = models.CharField(max_length=300, blank=True, help_text="The resource counted apart (for_each), or empty.")
    opened = models.DateTimeField(default=timezone.now)
    deadline = models.DateTimeField(null=True, blank=True, help_text="Proactive: fires when nothing came by then.")
    count = models.PositiveIntegerField(default=0)
    event_ids = models.JSONField(default=list, blank=True, help_text="The events counted (the last ones).")
    resource = models.JSONField(default=dict, blank=True, help_text="The resource of the last event counted.")
    fired = models.DateTimeField(null=True, blank=True, help_text="A composite's part: when it last fired.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["automation", "path", "key"], name="trigger_bucket_unique")]
        indexes = [models.Index(fields=["deadline"], name="trigger_bucket_deadline")]


class Firing(models.Model):
    automation = models.ForeignKey(Automation, on_delete=models.CASCADE, related_name="firings")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="automation_firings")
    fired = models.DateTimeField(default=timezone.now)
    key = models.CharField(max_length=300, blank=True)
    reason = models.TextField(blank=True, help_text="Why it fired, for a person.")
    event_ids = models.JSONField(default=list, blank=True, help_text="The events that caused it.")
    resource = models.JSONField(default=dict, blank=True, help_text="The resource it fired about, if one.")
    results = models.JSONField(default=list, blank=True, help_text="Per action: type, ok, detail.")

    class Meta:
        indexes = [models.Index(fields=["automation", "-fired"], name="firing_automation_fired"),
                   models.Index(fields=["workspace", "-fired"], name="firing_ws_fired")]
        ordering = ["-fired"]

    def __str__(self):
        return f"{self.automation} fired at {self.fired:%Y-%m-%d %H:%M:%S}"


class DeliveryKind(models.TextChoices):
    WEBHOOK = "webhook", "Webhook"
    EMAIL = "email", "E-mail"
    SLACK = "slack", "Slack-compatible webhook"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (gave up)"


class Delivery(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="deliveries")
    firing = models.ForeignKey(Firing, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries")
    kind = models.CharField(max_length=10, choices=DeliveryKind.choices)
    target = models.TextField(help_text="The URL, or the e-mail addresses.")
    subject = models.CharField(max_length=300, blank=True)
    body = models.TextField(blank=True)
    secret_name = models.CharField(max_length=200, blank=True,
                                   help_text="The workspace secret that signs a webhook's body (HMAC-SHA256).")
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt = models.DateTimeField(default=timezone.now)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    delivered = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "next_attempt"], name="delivery_due"),
                   models.Index(fields=["workspace", "-created"], name="delivery_ws_created")]
        ordering = ["-created"]

    def __str__(self):
        return f"{self.kind} to {self.target[:60]} ({self.status})"
