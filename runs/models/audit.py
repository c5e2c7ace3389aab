"""The audit trail: who changed what in a workspace's setup, when, and from what to what.

Written by the actions layer (runs/actions.py) in the same transaction as the change. Runs'
state changes are not here: they have their own history (StateChange).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone

from .workspaces import Workspace


class AuditEntry(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="audit_entries")
    occurred = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=200, help_text="A username, api-key:NAME, or the command that did it.")
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    via = models.CharField(max_length=20, help_text="api, admin, dashboard or cli.")
    action = models.CharField(max_length=60, help_text="What was done, e.g. membership.role or schedule.pause.")
    target_type = models.CharField(max_length=40)
    target_id = models.CharField(max_length=64, blank=True)
    target_name = models.CharField(max_length=300, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["workspace", "-occurred"], name="audit_workspace_time"),
                   models.Index(fields=["occurred"], name="audit_time")]
        ordering = ["-occurred", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self):
        return f"{self.occurred:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target_name}"
