"""The Zombie Killer: RUNNING task runs whose heartbeat stopped → FAILED; silent RUNNING flow runs → CRASHED.

Task runs get the ZOMBIE_KILLER_THRESHOLD_SECONDS threshold (10 min; 2 min in the fast profile).
Flow runs get a longer one (ZOMBIE_KILLER_FLOW_RUN_THRESHOLD_SECONDS) so that Lazarus, which
re-runs a flow whose node died, acts first; the crash verdict is the backstop. A flow run whose
task runs still beat is alive, whatever its own heartbeat says.
"""

from datetime import timedelta

from django.conf import settings

from runs.models import Actor, FlowRun, Log, LogLevel, State, TaskRun
from runs.states import transition_flow_runs, transition_task_runs
from services.liveness import silent_flow_run_ids, silent_task_run_ids, task_runs_beating_since
from services.registry import register

TASK_RUN_MESSAGE = 'Marked "Failed" by a Zombie Killer process'
SOURCE = "zombie-killer"


def _config(key):
    return settings.ORCHESTRATOR[key]


def _flow_run_message(threshold):
    return f'Marked "Crashed" by a Zombie Killer process: no sign of life for over {threshold} s.'


@register("zombie-killer", interval_setting="ZOMBIE_KILLER_LOOP_SECONDS",
          description="Fails task runs and crashes flow runs whose heartbeat stopped.")
def run_once(now):
    """Fail silent RUNNING task runs, crash silent RUNNING flow runs; returns how many of each."""
    batch = _config("RECOVERY_BATCH_SIZE")
    task_threshold = _config("ZOMBIE_KILLER_THRESHOLD_SECONDS")
    running_tasks = TaskRun.objects.filter(state=State.RUNNING, flow_run__deleted_at__isnull=True)
    task_ids = silent_task_run_ids(running_tasks, now, task_threshold, batch)
    failed = []
    if task_ids:
        # The queryset repeats the predicate, so a heartbeat that arrived meanwhile saves the run.
        failed = transition_task_runs(
            running_tasks.filter(pk__in=task_ids), State.FAILED, actor=Actor.ZOMBIE_KILLER,
            message=TASK_RUN_MESSAGE, now=now, extra_fields=("task_key",),
            event_payload=lambda row: {"verdict": "no heartbeat", "threshold_seconds": task_threshold},
        )

    flow_threshold = _config("ZOMBIE_KILLER_FLOW_RUN_THRESHOLD_SECONDS")
    running_flows = FlowRun.objects.alive().filter(state=State.RUNNING)
    flow_ids = silent_flow_run_ids(running_flows, now, flow_threshold, batch)
    crashed = []
    if flow_ids:
        # A task run's heartbeat is the flow run's sign of life too: one that arrived meanwhile saves it.
        beating = task_runs_beating_since(now - timedelta(seconds=flow_threshold))
        crashed = transition_flow_runs(
            running_flows.filter(pk__in=flow_ids).exclude(beating), State.CRASHED, actor=Actor.ZOMBIE_KILLER,
            message=_flow_run_message(flow_threshold), now=now,
            event_payload=lambda row: {"verdict": "no sign of life", "threshold_seconds": flow_threshold},
        )

    logs = [Log(workspace_id=row["flow_run__workspace_id"], flow_run_id=row["flow_run_id"], task_run_id=row["pk"],
                level=LogLevel.ERROR, source=SOURCE, timestamp=now,
                message=f"Task run {row['task_key']} failed: no heartbeat for over {task_threshold} s.")
            for row in failed]
    logs += [Log(workspace_id=row["workspace_id"], flow_run_id=row["pk"], level=LogLevel.ERROR, source=SOURCE,
                 timestamp=now, message=_flow_run_message(flow_threshold)) for row in crashed]
    Log.objects.bulk_create(logs)
    return {"task_runs_failed": len(failed), "flow_runs_crashed": len(crashed)}
