"""Task runs: the steps inside a flow run."""

import uuid

from django.db import models
from django.utils import timezone

from .flow_runs import FlowRun, State


class TaskRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    flow_run = models.ForeignKey(FlowRun, on_delete=models.CASCADE, related_name="task_runs")
    task_key = models.CharField(max_length=200, help_text="Which task of the flow, e.g. its function name.")
    dynamic_key = models.CharField(
        max_length=200, default="0", help_text="Tells apart calls of the same task within one flow run."
    )
    name = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.SCHEDULED)
    state_message = models.TextField(blank=True)
    state_changed = models.DateTimeField(default=timezone.now)
    run_count = models.PositiveIntegerField(default=0, help_text="Attempts so far.")
    max_retries = models.PositiveIntegerField(default=0)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # {"value": <the task's return value>} once it COMPLETED with a JSON result; null when it has none
    # (not finished, or a result JSON cannot hold). A later attempt of the flow run takes the value
    # instead of running the task again.
    result = models.JSONField(null=True, blank=True)
    # Set by its first move to COMPLETED, which counts it in its workspace's monthly usage
    # (runs/quota.py): a retried task run that completes again is not counted twice.
    quota_counted = models.BooleanField(default=False, editable=False)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["flow_run", "task_key", "dynamic_key"], name="taskrun_key_unique"),
        ]
        indexes = [
            # Zombie Killer: RUNNING task runs by last heartbeat.
            models.Index(
                fields=["last_heartbeat"], condition=models.Q(state="RUNNING"), name="taskrun_running_heartbeat"
            ),
            models.Index(fields=["flow_run", "state"], name="taskrun_flowrun_state"),
        ]
        ordering = ["created"]

    def __str__(self):
        return self.name or self.task_key

    @property
    def workspace_id(self):
        return self.flow_run.workspace_id
