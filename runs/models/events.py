"""Events: what happened, to which resource. Automations and the dashboard read them."""

from django.db import models
from django.utils import timezone

from .workspaces import Workspace


class Event(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="events")
    occurred = models.DateTimeField(default=timezone.now)
    name = models.CharField(max_length=200, help_text="e.g. flow-run.state.crashed, work-queue.unhealthy")
    resource = models.JSONField(default=dict, help_text='{"kind": "flow-run", "id": "…"}')
    related = models.JSONField(default=list, blank=True)
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["workspace", "occurred"], name="event_workspace_occurred")]
        ordering = ["-occurred"]

    def __str__(self):
        return f"{self.name} at {self.occurred:%Y-%m-%d %H:%M:%S}"
