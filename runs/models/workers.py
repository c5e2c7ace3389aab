"""Where work goes (work queues) and who does it (agents)."""

from django.db import models
from django.utils import timezone

from .validators import environment, json_object
from .workspaces import Workspace


class QueueHealth(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    UNHEALTHY = "unhealthy", "Unhealthy"
    UNKNOWN = "unknown", "Unknown"


class WorkQueue(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="work_queues")
    name = models.CharField(max_length=100)
    work_pool = models.CharField(max_length=100, blank=True, help_text="Optional pool that groups queues.")
    description = models.TextField(blank=True)
    concurrency_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Most runs of this queue SUBMITTED or RUNNING at once; empty: no limit."
    )
    paused = models.BooleanField(default=False, help_text="A paused queue hands out no runs.")
    job_env = models.JSONField(default=dict, blank=True, validators=[environment],
                               help_text="Environment variables for runs of this queue.")
    last_polled = models.DateTimeField(null=True, blank=True)
    health = models.CharField(max_length=9, choices=QueueHealth.choices, default=QueueHealth.UNKNOWN, editable=False,
                              help_text="The work-queue-monitor's verdict: not paused, polled lately, no LATE runs.")
    health_changed = models.DateTimeField(null=True, blank=True, editable=False,
                                          help_text="When the work-queue-monitor last changed the verdict.")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="work_queue_name_unique")]
        ordering = ["name"]

    def __str__(self):
        return self.name


class AgentStatus(models.TextChoices):
    ONLINE = "ONLINE", "Online"
    OFFLINE = "OFFLINE", "Offline"


class Agent(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=200)
    queues = models.ManyToManyField(WorkQueue, blank=True, related_name="agents")
    labels = models.JSONField(default=dict, blank=True, validators=[json_object])
    version = models.CharField(max_length=50, blank=True)
    heartbeat_interval = models.PositiveIntegerField(default=30, help_text="Seconds between the agent's heartbeats.")
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=AgentStatus.choices, default=AgentStatus.ONLINE)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="agent_name_unique")]
        indexes = [models.Index(fields=["status", "last_heartbeat"], name="agent_status_heartbeat")]
        ordering = ["name"]

    def __str__(self):
        return self.name
