"""Lazarus: re-runs flow runs whose node died, by rescheduling them (back to SCHEDULED, due now).

A flow run qualifies when it is SUBMITTED or RUNNING, has no SUBMITTED or RUNNING task run, and:
- SUBMITTED: it never started within LAZARUS_STARTING_GRACE_SECONDS (the agent's start failed);
- RUNNING: nothing moved for LAZARUS_GRACE_SECONDS (no state change of the run or its task runs)
  and it is silent (its heartbeat, or its agent's when heartbeats are off).
Each intervention writes a log line on the run (source `lazarus`, reason, attempt number). After
LAZARUS_MAX_RESCHEDULES (10) reschedules the next attempt marks the run FAILED instead.
"""

from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, F, OuterRef, Q

from events.emit import emit, make, resource
from runs.models import Actor, FlowRun, Log, LogLevel, State, TaskRun
from runs.states import transition_flow_runs
from services.liveness import own_beat_older_than, silent_flow_run_ids
from services.registry import register

SOURCE = "lazarus"
# The resources a flow-run.rescheduled event names, from the rows runs.states returns: the run's
# flow, schedule, queue and the agent it had.
_RELATED = (("flow", "flow_id"), ("schedule", "schedule_id"), ("work-queue", "work_queue_id"), ("agent", "agent_id"))


def _config(key):
    return settings.ORCHESTRATOR[key]


def _reason(row, grace, starting_grace):
    if row["state"] == State.SUBMITTED:
        return f"submitted but not started within {starting_grace} s"
    return f"running with no submitted or running task run and no progress for {grace} s"


def candidates(now):
    """The flow runs Lazarus may act on now (a queryset that re-checks every condition)."""
    grace, starting_grace = _config("LAZARUS_GRACE_SECONDS"), _config("LAZARUS_STARTING_GRACE_SECONDS")
    active_task = TaskRun.objects.filter(flow_run=OuterRef("pk"), state__in=[State.SUBMITTED, State.RUNNING])
    running_cutoff = now - timedelta(seconds=grace)
    recent_task_change = TaskRun.objects.filter(flow_run=OuterRef("pk"), state_changed__gte=running_cutoff)
    starting_cutoff = now - timedelta(seconds=starting_grace)
    starting = Q(state=State.SUBMITTED, state_changed__lt=starting_cutoff) & (
        Q(last_heartbeat__isnull=True) | Q(last_heartbeat__lt=starting_cutoff))
    running = (Q(state=State.RUNNING, state_changed__lt=running_cutoff) & ~Exists(recent_task_change)
               & (Q(heartbeat_interval__isnull=True) | own_beat_older_than(running_cutoff)))
    return FlowRun.objects.alive().filter(starting | running).filter(~Exists(active_task))


@register("lazarus", interval_setting="LAZARUS_LOOP_SECONDS",
          description="Reschedules flow runs whose node died; gives up after a number of attempts.")
def run_once(now):
    """Reschedule (or, past the limit, fail) stuck flow runs; returns how many of each."""
    grace, starting_grace = _config("LAZARUS_GRACE_SECONDS"), _config("LAZARUS_STARTING_GRACE_SECONDS")
    most, batch = _config("LAZARUS_MAX_RESCHEDULES"), _config("RECOVERY_BATCH_SIZE")
    stuck = candidates(now)
    ids = list(stuck.filter(state=State.SUBMITTED).order_by("pk").values_list("pk", flat=True)[:batch])
    # A RUNNING run is also judged by liveness: a quiet run whose agent still beats is left alone.
    ids += silent_flow_run_ids(stuck.filter(state=State.RUNNING), now, grace, batch)
    if not ids:
        return {"rescheduled": 0, "failed": 0}

    def reschedule_message(row):
        return (f"Rescheduled by Lazarus (attempt {row['lazarus_count'] + 1} of {most}): "
                f"{_reason(row, grace, starting_grace)}.")

    def give_up_message(row):
        return (f"Marked failed by Lazarus: attempt {row['lazarus_count'] + 1} exceeds the limit of {most} "
                f"reschedules ({_reason(row, grace, starting_grace)}).")

    def verdict(name):
        return lambda row: {"verdict": name, "attempt": row["lazarus_count"] + 1, "max_reschedules": most,
                            "reason": _reason(row, grace, starting_grace)}

    failed = transition_flow_runs(
        stuck.filter(pk__in=ids, lazarus_count__gte=most), State.FAILED, actor=Actor.LAZARUS, now=now,
        message=give_up_message, extra_fields=("lazarus_count",), event_payload=verdict("gave up"),
    )
    rescheduled = transition_flow_runs(
        stuck.filter(pk__in=ids, lazarus_count__lt=most), State.SCHEDULED, actor=Actor.LAZARUS, now=now,
        message=reschedule_message, extra_fields=("lazarus_count",), event_payload=verdict("rescheduled"),
        # Due now, claimable by any agent; the next attempt is judged on its own start and beats.
        updates={"lazarus_count": F("lazarus_count") + 1, "scheduled_start": now, "agent": None,
                 "start_time": None, "last_heartbeat": None},
    )
    Log.objects.bulk_create(
        [Log(workspace_id=row["workspace_id"], flow_run_id=row["pk"], level=LogLevel.WARNING, source=SOURCE,
             timestamp=now, message=reschedule_message(row)) for row in rescheduled]
        + [Log(workspace_id=row["workspace_id"], flow_run_id=row["pk"], level=LogLevel.ERROR, source=SOURCE,
               timestamp=now, message=give_up_message(row)) for row in failed]
    )
    # Beside the state event (…state.scheduled), one that says what Lazarus did, for automations
    # and the feed to match on without reading payloads.
    emit([make(row["workspace_id"], "flow-run.rescheduled", resource("flow-run", row["pk"]),
               related=[resource(kind, row[field]) for kind, field in _RELATED if row[field] is not None],
               payload={"attempt": row["lazarus_count"] + 1, "max_reschedules": most,
                        "reason": _reason(row, grace, starting_grace), "by": SOURCE}, occurred=now)
          for row in rescheduled])
    return {"rescheduled": len(rescheduled), "failed": len(failed)}
