"""The Scheduler: every ACTIVE schedule keeps its next N runs (default 10) as SCHEDULED flow runs."""

import logging
from datetime import timedelta

from django.conf import settings

from events.emit import emit, make, resource
from events.models import Event
from runs.models import Schedule, ScheduleStatus
from runs.schedules import ScheduleComputeError
from runs.scheduling import (cancel_superseded_late_runs, delete_runs_of_paused_schedules,
                             delete_stale_runs_of_edited_schedules, schedule_future_runs)
from services.registry import register

logger = logging.getLogger(__name__)

SERVICE = "scheduler"
# A schedule that keeps failing is logged on every pass, but its `schedule.failed` event comes at
# most once in this window: automations on the event hear of it without being woken every 10 s.
FAILED_EVENT_WINDOW = timedelta(hours=1)


@register(SERVICE, interval_setting="SCHEDULER_LOOP_SECONDS",
          description="Creates the next runs of every active schedule.")
def run_once(now):
    """Create the missing future runs of every active schedule, tidy paused and late ones; returns counts.

    Safe with any number of copies at once: inserts ignore runs that exist (unique constraint),
    deletes and cancellations are conditional. A fixed number of queries per pass. A schedule
    whose fire times cannot be computed (its rule fails, or costs more than the time budget) is
    skipped with a log line and a `schedule.failed` event; the pass goes on for every other one.
    """
    schedules = list(
        Schedule.objects.filter(status=ScheduleStatus.ACTIVE).select_related("flow").order_by("pk")
        .only("id", "slug", "kind", "interval_seconds", "anchor", "cron", "rrule", "calendar", "timezone",
              "dst_nonexistent", "dst_ambiguous", "status", "parameters", "work_queue_id", "flow_version_id",
              "catchup_max_runs", "created", "updated", "flow__id", "flow__name", "flow__workspace_id")
    )
    failures = {}  # schedule id: SkippedSchedule, filled by the steps below
    # Edits of the last few loops are re-checked: a pass racing an edit may have written old times.
    edited_since = now - timedelta(seconds=3 * settings.ORCHESTRATOR["SCHEDULER_LOOP_SECONDS"])
    stale = delete_stale_runs_of_edited_schedules(schedules, now, edited_since, failures)
    created = schedule_future_runs(schedules, now, failures=failures)
    deleted = delete_runs_of_paused_schedules(now)
    cancelled = cancel_superseded_late_runs(now)
    record_failures(failures.values(), now)
    # Only rows touched go in the summary as numbers: Towel's ledger adds its whole numbers up as "items".
    return {"runs_created": created, "stale_runs_deleted": stale, "paused_runs_deleted": deleted,
            "late_runs_cancelled": len(cancelled), "failed_schedules": sorted(failures)}


def record_failures(skipped, now):
    """A log line per skipped schedule, and a `schedule.failed` event unless it had one within the
    window; two queries whatever their number, none when nothing failed."""
    skipped = list(skipped)
    if not skipped:
        return
    for item in skipped:
        schedule, error = item.schedule, item.error
        # A rule that cannot be evaluated is the user's input: one line. Anything else is ours: its traceback.
        logger.warning("Scheduler skipped schedule %s (id %s) while %s: %s", schedule, schedule.pk, item.step,
                       _message(error), exc_info=None if isinstance(error, ScheduleComputeError) else error)
    workspaces = {item.schedule.flow.workspace_id for item in skipped}
    # str(): SQLite reads the JSON text "12" back as the number 12.
    recent = {str(schedule_id) for schedule_id in Event.objects.filter(
        name="schedule.failed", workspace_id__in=workspaces, occurred__gt=now - FAILED_EVENT_WINDOW,
    ).values_list("resource__id", flat=True)}
    emit([make(item.schedule.flow.workspace_id, "schedule.failed",
               resource("schedule", item.schedule.pk, str(item.schedule)),
               related=[resource("flow", item.schedule.flow_id)],
               payload={"service": SERVICE, "step": item.step, "error": _message(item.error)}, occurred=now)
          for item in skipped if str(item.schedule.pk) not in recent])


def _message(error):
    if isinstance(error, ScheduleComputeError):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items())
    return f"{type(error).__name__}: {error}"
