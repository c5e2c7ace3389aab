"""cancellation-cleanup: finishes what a cancellation started.

- a CANCELLING flow run whose agent is gone (no agent, agent offline or silent, or its own
  heartbeat and its task runs' silent past CANCELLING_THRESHOLD_SECONDS) becomes CANCELLED;
- unfinished task runs of CANCELLING/CANCELLED flow runs are cancelled;
- unfinished child flow runs (started by a task run) of CANCELLING/CANCELLED flow runs are cancelled.
"""

from datetime import timedelta

from django.conf import settings

from runs.models import TERMINAL_STATES, Actor, FlowRun, State, TaskRun
from runs.states import transition_flow_runs, transition_task_runs
from services.liveness import silent_flow_run_ids, task_runs_beating_since
from services.registry import register

CANCELLED_PARENTS = [State.CANCELLING, State.CANCELLED]


@register("cancellation-cleanup", interval_setting="CANCELLATION_CLEANUP_LOOP_SECONDS",
          description="Cancels the task runs and child runs of cancelled runs; ends cancellations nobody finishes.")
def run_once(now):
    """Finish abandoned cancellations, then cancel what cancelled runs left behind; returns counts."""
    batch = settings.ORCHESTRATOR["RECOVERY_BATCH_SIZE"]
    threshold = settings.ORCHESTRATOR["CANCELLING_THRESHOLD_SECONDS"]
    cancelling = FlowRun.objects.alive().filter(state=State.CANCELLING)
    abandoned_ids = silent_flow_run_ids(cancelling, now, threshold, batch)
    abandoned = []
    if abandoned_ids:
        # Task runs still beating mean its agent is still there, finishing the cancellation.
        beating = task_runs_beating_since(now - timedelta(seconds=threshold))
        abandoned = transition_flow_runs(
            cancelling.filter(pk__in=abandoned_ids).exclude(beating), State.CANCELLED,
            actor=Actor.CANCELLATION_CLEANUP, now=now,
            message=f"Cancelled: its agent is gone and nothing reported for {threshold} s while cancelling.",
        )

    leftover_tasks = TaskRun.objects.filter(flow_run__state__in=CANCELLED_PARENTS).exclude(state__in=TERMINAL_STATES)
    tasks = transition_task_runs(
        leftover_tasks, State.CANCELLED, actor=Actor.CANCELLATION_CLEANUP, now=now, limit=batch,
        extra_fields=("flow_run__state",),
        message=lambda row: f"Cancelled because its flow run is {row['flow_run__state']}.",
    )
    leftover_children = (FlowRun.objects.alive().filter(parent_task_run__flow_run__state__in=CANCELLED_PARENTS)
                         .exclude(state__in=TERMINAL_STATES))
    children = transition_flow_runs(
        leftover_children, State.CANCELLED, actor=Actor.CANCELLATION_CLEANUP, now=now, limit=batch,
        extra_fields=("parent_task_run__flow_run__state",),
        message=lambda row: f"Cancelled because its parent flow run is {row['parent_task_run__flow_run__state']}.",
    )
    return {"cancelling_runs_cancelled": len(abandoned), "task_runs_cancelled": len(tasks),
            "child_runs_cancelled": len(children)}
