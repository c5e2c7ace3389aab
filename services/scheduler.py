"""The Scheduler: every ACTIVE schedule keeps its next N runs (default 10) as SCHEDULED flow runs."""

from datetime import timedelta

from django.conf import settings

from runs.models import Schedule, ScheduleStatus
from runs.scheduling import (cancel_superseded_late_runs, delete_runs_of_paused_schedules,
                             delete_stale_runs_of_edited_schedules, schedule_future_runs)
from services.registry import register


@register("scheduler", interval_setting="SCHEDULER_LOOP_SECONDS",
          description="Creates the next runs of every active schedule.")
def run_once(now):
    """Create the missing future runs of every active schedule, tidy paused and late ones; returns counts.

    Safe with any number of copies at once: inserts ignore runs that exist (unique constraint),
    deletes and cancellations are conditional. A fixed number of queries per pass.
    """
    schedules = list(
        Schedule.objects.filter(status=ScheduleStatus.ACTIVE).select_related("flow").order_by("pk")
        .only("id", "slug", "kind", "interval_seconds", "anchor", "cron", "rrule", "calendar", "timezone",
              "dst_nonexistent", "dst_ambiguous", "status", "parameters", "work_queue_id", "catchup_max_runs",
              "created", "updated", "flow__id", "flow__workspace_id")
    )
    # Edits of the last few loops are re-checked: a pass racing an edit may have written old times.
    edited_since = now - timedelta(seconds=3 * settings.ORCHESTRATOR["SCHEDULER_LOOP_SECONDS"])
    stale = delete_stale_runs_of_edited_schedules(schedules, now, edited_since)
    created = schedule_future_runs(schedules, now)
    deleted = delete_runs_of_paused_schedules(now)
    cancelled = cancel_superseded_late_runs(now)
    # Only rows touched go in the summary: Towel's ledger adds its whole numbers up as "items".
    return {"runs_created": created, "stale_runs_deleted": stale, "paused_runs_deleted": deleted,
            "late_runs_cancelled": len(cancelled)}
