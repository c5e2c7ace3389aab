"""mark-late-runs: SCHEDULED runs past their scheduled start + grace (15 s) become LATE."""

from datetime import timedelta

from django.conf import settings

from runs.models import Actor, FlowRun, ScheduleStatus, State
from runs.states import transition_flow_runs
from services.registry import register


@register("mark-late-runs", interval_setting="LATE_RUNS_LOOP_SECONDS",
          description="Marks SCHEDULED runs past their start time plus a grace period as LATE.")
def run_once(now):
    """Mark overdue SCHEDULED runs LATE; returns how many."""
    grace = settings.ORCHESTRATOR["LATE_RUNS_GRACE_SECONDS"]
    overdue = (FlowRun.objects.alive().filter(state=State.SCHEDULED, scheduled_start__lt=now - timedelta(seconds=grace))
               # A paused schedule's leftover runs wait for the operator; calling them late is noise.
               .exclude(schedule__status=ScheduleStatus.PAUSED))
    # The oldest first, through the partial index on due SCHEDULED runs (flowrun_scheduled_due);
    # the transition re-checks every condition under its row locks.
    ids = list(overdue.order_by("scheduled_start").values_list("pk", flat=True)
               [:settings.ORCHESTRATOR["RECOVERY_BATCH_SIZE"]])
    if not ids:
        return {"runs_marked_late": 0}
    moved = transition_flow_runs(overdue.filter(pk__in=ids), State.LATE, actor=Actor.LATE_RUNS, now=now,
                                 message=f"Not started within {grace} s of its scheduled start.")
    return {"runs_marked_late": len(moved)}
