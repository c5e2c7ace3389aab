"""Flow runs: one execution of a flow, and the states it moves through."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

from .flows import Flow, FlowVersion
from .schedules import Schedule
from .validators import json_object
from .workers import Agent, WorkQueue
from .workspaces import ApiKey, Workspace


class State(models.TextChoices):
    SCHEDULED = "SCHEDULED", "Scheduled"
    LATE = "LATE", "Late"
    SUBMITTED = "SUBMITTED", "Submitted"
    RUNNING = "RUNNING", "Running"
    PAUSED = "PAUSED", "Paused"
    CANCELLING = "CANCELLING", "Cancelling"
    COMPLETED = "COMPLETED", "Completed"
    FAILED = "FAILED", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"
    CRASHED = "CRASHED", "Crashed"


TERMINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.CRASHED})
CLAIMABLE_STATES = frozenset({State.SCHEDULED, State.LATE})
ACTIVE_STATES = frozenset({State.SUBMITTED, State.RUNNING})


class FlowRunQuerySet(models.QuerySet):
    def alive(self):
        """Runs not soft-deleted."""
        return self.filter(deleted_at__isnull=True)

    def listed(self):
        """Runs a list shows: not soft-deleted, and not of a flow or schedule marked deleted (whose
        runs the background deletion is still removing).

        As NOT IN over the few deleted flows and schedules, not as joins: joining every run to its
        flow and (outer) to its schedule made PostgreSQL read all of a workspace's runs for a
        count of its RUNNING ones (150 ms at 100,000 runs instead of an index range read)."""
        deleted_flows = Flow.all_objects.filter(deleted_at__isnull=False).values("pk")
        deleted_schedules = Schedule.all_objects.filter(deleted_at__isnull=False).values("pk")
        return self.alive().exclude(flow_id__in=deleted_flows).exclude(schedule_id__in=deleted_schedules)

    def future_auto_scheduled(self, now):
        """Auto-scheduled runs still waiting for a future start: the ones a pause deletes."""
        return self.filter(auto_scheduled=True, state=State.SCHEDULED, scheduled_start__gt=now, start_time__isnull=True)


class FlowRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # A state change rewrites every index of its row, so the foreign keys whose columns lead a
    # composite index below (workspace, flow, schedule, agent) have no index of their own.
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="flow_runs", db_index=False)
    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="runs", db_index=False)
    flow_version = models.ForeignKey(FlowVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    schedule = models.ForeignKey(Schedule, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs",
                                 db_index=False)
    # Kept apart from the schedule FK: (flow, schedule_slug, slot) identifies an auto-scheduled run
    # even after its schedule is deleted and re-created with the same slug.
    schedule_slug = models.SlugField(max_length=100, blank=True, db_index=False)  # indexed below, without LIKE's
    parent_task_run = models.ForeignKey(
        "runs.TaskRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="child_flow_runs"
    )
    name = models.CharField(max_length=200, blank=True)
    parameters = models.JSONField(default=dict, blank=True, validators=[json_object])
    state = models.CharField(max_length=12, choices=State.choices, default=State.SCHEDULED)
    state_message = models.TextField(blank=True)
    state_changed = models.DateTimeField(default=timezone.now)
    scheduled_start = models.DateTimeField(
        default=timezone.now, help_text="When the run is due: its slot, or later for a retry or a Lazarus reschedule."
    )
    # The identity of an auto-scheduled run never moves: a reschedule changes when the next attempt
    # is due (`scheduled_start`), not which fire time of its schedule the run stands for. Moving the
    # identity made two rescheduled runs of one schedule collide on the unique key below.
    slot = models.DateTimeField(
        null=True, blank=True, editable=False,
        help_text="The fire time of its schedule this run was made for (UTC); empty for manual runs.",
    )
    auto_scheduled = models.BooleanField(default=False, help_text="Made by the scheduler, not by a person.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="created_flow_runs"
    )
    # A service key (a CI job's) acts for no person: without it, its runs would name no creator.
    created_by_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="created_flow_runs",
        help_text="The API key a manual run was made with (also a person's own key); empty otherwise.",
    )
    work_queue = models.ForeignKey(WorkQueue, null=True, blank=True, on_delete=models.SET_NULL, related_name="flow_runs")
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="flow_runs",
                              db_index=False)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    heartbeat_interval = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds between this run's heartbeats; empty: heartbeats off."
    )
    run_count = models.PositiveIntegerField(default=0, help_text="How many times it entered RUNNING.")
    lazarus_count = models.PositiveIntegerField(default=0, help_text="How many times Lazarus rescheduled it.")
    # Which attempt's report token is valid (runs/run_tokens.py): moves on every claim and every
    # return to SCHEDULED, so the runner of an earlier attempt is refused as superseded.
    token_generation = models.PositiveIntegerField(
        default=0, db_default=0, editable=False,
        help_text="Moves when the run is claimed or rescheduled; older report tokens are refused.",
    )
    pause_expires_at = models.DateTimeField(null=True, blank=True, help_text="A PAUSED run fails after this.")
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Retention: soft-deleted after this.")
    deleted_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(auto_now=True)

    objects = FlowRunQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["flow", "schedule_slug", "slot"],
                condition=models.Q(auto_scheduled=True),
                name="flowrun_auto_scheduled_slot_unique",
            ),
            models.UniqueConstraint(
                fields=["workspace", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="flowrun_idempotency_key_unique",
            ),
        ]
        indexes = [
            # Agents poll: due runs of their queues, oldest first.
            models.Index(
                fields=["work_queue", "scheduled_start"],
                condition=models.Q(state__in=["SCHEDULED", "LATE"]),
                name="flowrun_claimable",
            ),
            # Zombie Killer / Lazarus: active runs by heartbeat.
            models.Index(
                fields=["state", "last_heartbeat"],
                condition=models.Q(state__in=["SUBMITTED", "RUNNING", "CANCELLING", "PAUSED"]),
                name="flowrun_active_heartbeat",
            ),
            # mark-late-runs: SCHEDULED runs by due time, whatever their queue.
            models.Index(
                fields=["scheduled_start"], condition=models.Q(state="SCHEDULED"), name="flowrun_scheduled_due"
            ),
            models.Index(fields=["flow", "scheduled_start"], name="flowrun_flow_time"),
            models.Index(fields=["schedule_slug"], name="flowrun_schedule_slug"),  # the API's schedule= filter
            models.Index(fields=["schedule", "scheduled_start"], name="flowrun_schedule_time"),
            # The API's run pages: keyset cursors on (time, id), so id ends each index (ties are common:
            # a scheduler pass gives its runs one `created`, many schedules fire at 02:00).
            models.Index(fields=["workspace", "state", "scheduled_start", "id"], name="flowrun_ws_state_time_id"),
            models.Index(fields=["workspace", "created", "id"], name="flowrun_ws_created_id"),
            # The dashboard's runs list: newest due first in keyset pages, whatever the state.
            models.Index(fields=["workspace", "-scheduled_start", "-id"], name="flowrun_ws_due_id"),
            # The dashboard's budgets at a million runs (issue 15; runs/dashboard/). Partial on
            # deleted_at IS NULL and covering flow and schedule, so the counts of listed runs
            # (FlowRun.objects.listed()) are index-only scans: the overview's runs by state, the
            # runs list's capped counts per state, with and without a flow, the queues' loads.
            models.Index(fields=["workspace", "state", "scheduled_start"], include=["flow", "schedule", "work_queue"],
                         condition=models.Q(deleted_at__isnull=True), name="flowrun_listed_state_time"),
            models.Index(fields=["flow", "state", "-scheduled_start", "-id"], include=["workspace", "schedule"],
                         condition=models.Q(deleted_at__isnull=True), name="flowrun_listed_flow_state"),
            # The overview's runs in flight, the most silent first: the first 50 in index order.
            models.Index(models.F("workspace"), Coalesce("last_heartbeat", "start_time", "state_changed"),
                         include=["flow", "schedule"],
                         condition=models.Q(state__in=["SUBMITTED", "RUNNING", "CANCELLING"], deleted_at__isnull=True),
                         name="flowrun_in_flight_beat"),
            # The timeline's bars in order of their start (start time, else due time): unfinished runs
            # read in index order; finished ones index-only (their end time included) to skip the
            # runs of the look-back day that ended before the window without reading the table.
            models.Index(models.F("workspace"), Coalesce("start_time", "scheduled_start"), models.F("id"),
                         condition=models.Q(state__in=["SCHEDULED", "LATE", "SUBMITTED", "RUNNING", "PAUSED",
                                                       "CANCELLING"]),
                         name="flowrun_bar_unfinished"),
            models.Index(models.F("workspace"), Coalesce("start_time", "scheduled_start"), models.F("id"),
                         include=["start_time", "scheduled_start", "end_time", "flow", "schedule", "work_queue"],
                         condition=models.Q(state__in=["COMPLETED", "FAILED", "CANCELLED", "CRASHED"],
                                            deleted_at__isnull=True),
                         name="flowrun_bar_finished"),
            # An agent's page: its unfinished runs, and its runs newest first (the finished of a week).
            models.Index(fields=["agent", "-scheduled_start", "-id"],
                         condition=models.Q(state__in=["SCHEDULED", "LATE", "SUBMITTED", "RUNNING", "PAUSED",
                                                       "CANCELLING"]),
                         name="flowrun_agent_unfinished"),
            models.Index(fields=["agent", "-scheduled_start", "-id"], name="flowrun_agent_due_id"),
            # Retention (services/retention.py), one index per step so each pass is an index scan:
            # finished runs not yet given an expiry, by end; expired runs not yet hidden; hidden runs.
            models.Index(
                fields=["workspace", "end_time"],
                condition=models.Q(state__in=["COMPLETED", "FAILED", "CANCELLED", "CRASHED"],
                                   expires_at__isnull=True, deleted_at__isnull=True),
                name="flowrun_retention_due",
            ),
            models.Index(fields=["workspace", "expires_at"],
                         condition=models.Q(expires_at__isnull=False, deleted_at__isnull=True),
                         name="flowrun_expired"),
            models.Index(fields=["workspace", "deleted_at"], condition=models.Q(deleted_at__isnull=False),
                         name="flowrun_soft_deleted"),
        ]

    def __str__(self):
        return self.name or str(self.id)

    def save(self, *args, **kwargs):
        if self.auto_scheduled and self.slot is None:
            self.slot = self.scheduled_start  # made for that fire time; it stays its identity
        super().save(*args, **kwargs)

    @property
    def is_terminal(self):
        return self.state in TERMINAL_STATES

    def heartbeat_age(self, now=None):
        """Seconds since the last heartbeat (or since start when none came yet); None if not started."""
        beat = self.last_heartbeat or self.start_time
        if beat is None:
            return None
        return ((now or timezone.now()) - beat).total_seconds()
