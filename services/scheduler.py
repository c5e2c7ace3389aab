"""The Scheduler: every ACTIVE schedule keeps its next N runs (default 10) as SCHEDULED flow runs."""

from django.conf import settings

from runs.models import Schedule, ScheduleStatus
from runs.scheduling import schedule_future_runs
from services.registry import register


@register("scheduler", interval_seconds=settings.ORCHESTRATOR["SCHEDULER_LOOP_SECONDS"],
          description="Creates the next runs of every active schedule.")
def run_once(now):
    """Create the missing future runs of every active schedule; returns counts."""
    schedules = list(Schedule.objects.filter(status=ScheduleStatus.ACTIVE).select_related("flow"))
    created = schedule_future_runs(schedules, now)
    return {"schedules": len(schedules), "runs_created": created}
