"""Schedules: when a flow should run. The kinds themselves live in runs/schedules/."""

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone as dj_timezone
from timezone_field import TimeZoneField

from .flows import Flow, FlowVersion
from .validators import json_object
from .workers import WorkQueue
from .workspaces import LiveManager


class ScheduleKind(models.TextChoices):
    INTERVAL = "interval", "Interval"
    CRON = "cron", "Cron"
    RRULE = "rrule", "Recurrence rule (RFC 5545)"
    CALENDAR = "calendar", "Calendar rule"


class ScheduleStatus(models.TextChoices):
    ACTIVE = "ACTIVE", "Active"
    PAUSED = "PAUSED", "Paused"


class NonexistentTimePolicy(models.TextChoices):
    """A local time skipped by a spring-forward change (02:30 on the night clocks jump 02:00→03:00)."""

    SHIFT = "shift", "Run at the first valid instant after the gap"
    SKIP = "skip", "Skip that occurrence"


class AmbiguousTimePolicy(models.TextChoices):
    """A local time that happens twice when clocks fall back (01:30 on the night 02:00→01:00)."""

    ONCE = "once", "Run once, at the first occurrence"
    TWICE = "twice", "Run at both occurrences"


class Schedule(models.Model):
    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="schedules")
    slug = models.SlugField(
        max_length=100, help_text="Stable name within the flow; re-deploying upserts by it, so runs never duplicate."
    )
    description = models.CharField(max_length=300, blank=True)
    kind = models.CharField(max_length=16, choices=ScheduleKind.choices, default=ScheduleKind.INTERVAL)
    interval_seconds = models.PositiveBigIntegerField(null=True, blank=True, help_text="Interval schedules: seconds between runs.")
    anchor = models.DateTimeField(
        null=True, blank=True, help_text="Interval schedules: the runs fall on anchor + k × interval."
    )
    cron = models.CharField(max_length=200, blank=True, help_text="Cron schedules: 5 or 6 fields.")
    rrule = models.TextField(blank=True, help_text="RRULE schedules: RFC 5545 text, may include DTSTART and EXDATE.")
    calendar = models.JSONField(default=dict, blank=True, help_text="Calendar rules: base rule, filters, adjustment.")
    timezone = TimeZoneField(default="UTC", help_text="IANA zone the schedule is evaluated in.")
    dst_nonexistent = models.CharField(
        max_length=8, choices=NonexistentTimePolicy.choices, default=NonexistentTimePolicy.SHIFT,
        verbose_name="DST gap policy",
    )
    dst_ambiguous = models.CharField(
        max_length=8, choices=AmbiguousTimePolicy.choices, default=AmbiguousTimePolicy.ONCE,
        verbose_name="DST overlap policy",
    )
    status = models.CharField(max_length=8, choices=ScheduleStatus.choices, default=ScheduleStatus.ACTIVE)
    parameters = models.JSONField(default=dict, blank=True, validators=[json_object],
                                  help_text="Parameters of the runs it creates.")
    work_queue = models.ForeignKey(
        WorkQueue, null=True, blank=True, on_delete=models.SET_NULL, related_name="schedules",
        help_text="Queue its runs go to; empty: the workspace's 'default' queue.",
    )
    # RESTRICT, not PROTECT: deleting the flow (which deletes its schedules too) still works, while
    # deleting only the pinned version is refused instead of silently turning the pin into "latest".
    flow_version = models.ForeignKey(
        FlowVersion, null=True, blank=True, on_delete=models.RESTRICT, related_name="pinned_schedules",
        verbose_name="pinned version",
        help_text="The version its runs run; empty: each run runs the flow's latest version when an agent claims it.",
    )
    catchup_max_runs = models.PositiveIntegerField(
        default=0, help_text="After downtime or a resume, create up to this many missed past runs (0: none)."
    )
    only_newest_when_late = models.BooleanField(
        default=False, help_text="When runs pile up late, cancel the older late ones and run only the newest."
    )
    created = models.DateTimeField(default=dj_timezone.now)
    updated = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False,
                                      help_text="Marked deleted; its runs are being deleted in the background.")

    objects = LiveManager()
    all_objects = models.Manager()

    class Meta:
        # A deleted schedule's slug is free at once: its runs may take minutes to go.
        constraints = [models.UniqueConstraint(fields=["flow", "slug"], condition=models.Q(deleted_at__isnull=True),
                                               name="schedule_slug_unique")]
        indexes = [models.Index(fields=["status"], name="schedule_status")]
        ordering = ["flow__name", "slug"]
        base_manager_name = "all_objects"

    def __str__(self):
        return f"{self.flow.name}/{self.slug}"

    @property
    def is_active(self):
        return self.status == ScheduleStatus.ACTIVE

    def next_fire_times(self, after, count):
        """The next `count` fire times strictly after `after`, as aware UTC datetimes."""
        from runs.schedules import next_fire_times

        return next_fire_times(self, after, count)

    def describe(self):
        """A sentence a person can read, e.g. 'Every 5 minutes'."""
        from runs.schedules import describe

        return describe(self)

    @property
    def follows_latest(self):
        return self.flow_version_id is None

    def validate_pin(self):
        """A pinned version must be one of the schedule's own flow (any of them, archived or not)."""
        if self.flow_version_id is None or self.flow_id is None:
            return
        if self.flow_version.flow_id != self.flow_id:
            raise ValidationError({"flow_version": [
                f"Version {self.flow_version_id} belongs to flow {self.flow_version.flow.name}, not to this "
                f"schedule's flow: pin a version of {self.flow.name}, or leave it empty to follow the latest."]})

    def clean(self):
        from runs.schedules import validate_schedule

        validate_schedule(self)
        self.validate_pin()
