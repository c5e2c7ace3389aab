"""Background deletion jobs: a flow, a schedule with its runs, or a workspace, deleted in batches.

The request marks the target deleted (gone from every list at once) and makes a job; a Celery
task deletes its rows in batches (runs/deletion.py) and records its progress here. A worker holds
a job by a lease (`holder`, `lease_expires_at`) that each batch renews; when a worker dies, the
deletion-jobs service hands the job to another once the lease ran out, and it goes on from where
the dead one stopped (what is deleted stays deleted).
"""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from .workspaces import Workspace


class DeletionTarget(models.TextChoices):
    FLOW = "flow", "Flow"
    SCHEDULE = "schedule", "Schedule with its runs"
    WORKSPACE = "workspace", "Workspace"


class DeletionState(models.TextChoices):
    PENDING = "PENDING", "Pending"
    RUNNING = "RUNNING", "Running"
    DONE = "DONE", "Done"
    FAILED = "FAILED", "Failed"


class DeletionJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Kept after its workspace is gone (a deleted workspace's job says what became of it).
    workspace = models.ForeignKey(Workspace, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="deletion_jobs")
    workspace_name = models.CharField(max_length=300, help_text="account/workspace, kept after it is deleted.")
    target_type = models.CharField(max_length=16, choices=DeletionTarget.choices)
    target_id = models.CharField(max_length=64)
    target_name = models.CharField(max_length=300)
    requested_by = models.CharField(max_length=200, help_text="A username, api-key:NAME, or the command.")
    requested_by_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                          on_delete=models.SET_NULL, related_name="+")
    via = models.CharField(max_length=20, help_text="api, admin, dashboard or cli.")
    state = models.CharField(max_length=8, choices=DeletionState.choices, default=DeletionState.PENDING)
    runs_deleted = models.PositiveBigIntegerField(default=0)
    rows_deleted = models.PositiveBigIntegerField(
        default=0, help_text="Every row deleted so far: runs, task runs, history, logs and the rest.")
    attempts = models.PositiveIntegerField(default=0, help_text="How many workers took the job (more after a crash).")
    holder = models.UUIDField(null=True, blank=True, editable=False,
                              help_text="The lease of the worker deleting it; a new one when another takes over.")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["workspace", "-created"], name="deletionjob_ws_created"),
            # The deletion-jobs service: unfinished jobs by lease.
            models.Index(fields=["lease_expires_at"], condition=models.Q(state__in=["PENDING", "RUNNING"]),
                         name="deletionjob_open_lease"),
        ]
        ordering = ["-created"]

    def __str__(self):
        return f"delete {self.target_type} {self.target_name} ({self.state})"

    @property
    def is_open(self):
        return self.state in (DeletionState.PENDING, DeletionState.RUNNING)
