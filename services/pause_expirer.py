"""fail-expired-pauses: PAUSED flow runs past their pause timeout become FAILED."""

from django.conf import settings

from runs.models import Actor, FlowRun, State
from runs.states import transition_flow_runs
from services.registry import register


@register("fail-expired-pauses", interval_setting="PAUSE_EXPIRER_LOOP_SECONDS",
          description="Fails PAUSED runs whose pause timed out.")
def run_once(now):
    """Fail PAUSED runs whose `pause_expires_at` has passed; returns how many."""
    expired = FlowRun.objects.alive().filter(state=State.PAUSED, pause_expires_at__lt=now)
    moved = transition_flow_runs(
        expired, State.FAILED, actor=Actor.PAUSE_EXPIRER, now=now, extra_fields=("pause_expires_at",),
        message=lambda row: f"The pause timed out at {row['pause_expires_at']:%Y-%m-%d %H:%M:%S} UTC without a resume.",
        limit=settings.ORCHESTRATOR["RECOVERY_BATCH_SIZE"],
    )
    return {"runs_failed": len(moved)}
