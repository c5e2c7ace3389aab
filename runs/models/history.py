"""What happened to a run: its state history and its logs."""

import logging

from django.conf import settings
from django.db import models
from django.utils import timezone

from .flow_runs import FlowRun, State
from .task_runs import TaskRun
from .workers import Agent
from .workspaces import Workspace


class Actor(models.TextChoices):
    """Who changed a state. Services name themselves, so a run's history says who did what."""

    USER = "user", "User"
    AGENT = "agent", "Agent"
    SCHEDULER = "scheduler", "Scheduler"
    LAZARUS = "lazarus", "Lazarus"
    ZOMBIE_KILLER = "zombie-killer", "Zombie Killer"
    LATE_RUNS = "mark-late-runs", "Mark late runs"
    CANCELLATION_CLEANUP = "cancellation-cleanup", "Cancellation cleanup"
    PAUSE_EXPIRER = "fail-expired-pauses", "Fail expired pauses"
    AGENT_MONITOR = "agent-monitor", "Agent monitor"
    AUTOMATION = "automation", "Automation"
    SYSTEM = "system", "System"


# Services whose FAILED/CRASHED verdict an agent may still overturn with a late COMPLETED.
RECOVERY_ACTORS = frozenset({Actor.ZOMBIE_KILLER, Actor.LAZARUS, Actor.AGENT_MONITOR})


class StateChange(models.Model):
    """One transition of a flow run (task_run empty) or of one of its task runs."""

    flow_run = models.ForeignKey(FlowRun, on_delete=models.CASCADE, related_name="history")
    task_run = models.ForeignKey(TaskRun, null=True, blank=True, on_delete=models.CASCADE, related_name="history")
    from_state = models.CharField(max_length=12, choices=State.choices, blank=True)
    to_state = models.CharField(max_length=12, choices=State.choices)
    message = models.TextField(blank=True)
    actor = models.CharField(max_length=24, choices=Actor.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL)
    timestamp = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["flow_run", "timestamp"], name="statechange_run_time"),
            models.Index(fields=["task_run", "timestamp"], name="statechange_task_time"),
            # The dashboard's recovery review: the recovery services' acts, newest first, read in
            # index order until a page is full (every other actor's changes are most of the table).
            models.Index(fields=["-timestamp", "-id"], condition=models.Q(actor__in=["lazarus", "zombie-killer"]),
                         name="statechange_recovery_time"),
        ]
        ordering = ["timestamp", "id"]

    def __str__(self):
        return f"{self.from_state or '∅'} → {self.to_state} by {self.actor}"


class LogLevel(models.IntegerChoices):
    DEBUG = logging.DEBUG, "DEBUG"
    INFO = logging.INFO, "INFO"
    WARNING = logging.WARNING, "WARNING"
    ERROR = logging.ERROR, "ERROR"
    CRITICAL = logging.CRITICAL, "CRITICAL"


class Log(models.Model):
    # The most written table: every index is paid on each of thousands of lines a second, so each
    # one here serves a read. The foreign keys' own indexes are left out: log_ws_time_id and
    # log_run_time begin with those columns, and most lines name no task run (a partial index).
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="logs", db_index=False)
    flow_run = models.ForeignKey(FlowRun, on_delete=models.CASCADE, related_name="logs", db_index=False)
    task_run = models.ForeignKey(TaskRun, null=True, blank=True, on_delete=models.CASCADE, related_name="logs",
                                 db_index=False)
    level = models.PositiveSmallIntegerField(choices=LogLevel.choices, default=LogLevel.INFO)
    message = models.TextField()
    timestamp = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=24, default="agent", help_text="agent, lazarus, zombie-killer, …")
    # Set by the log ingestion path (runs/logs/ingest.py) on every line an agent sent: a line
    # delivered twice (a persister crash between its store and its acknowledgement) is stored once.
    ingest_id = models.UUIDField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        # On PostgreSQL also a trigram index on upper(message) for `q` searches (migration 0016).
        indexes = [
            models.Index(fields=["flow_run", "timestamp"], name="log_run_time"),
            # The recovery review's lines (source lazarus, zombie-killer, …): not the agents' many.
            models.Index(fields=["workspace", "source", "timestamp"], name="log_service_source_time",
                         condition=~models.Q(source="agent")),
            models.Index(fields=["workspace", "timestamp", "id"], name="log_ws_time_id"),  # the API's log pages
            models.Index(fields=["task_run"], name="log_task_run", condition=models.Q(task_run__isnull=False)),
        ]
        ordering = ["timestamp", "id"]

    def __str__(self):
        return f"[{self.get_level_display()}] {self.message[:80]}"
