"""Heartbeat verdicts shared by the recovery services: who has gone silent, judged how.

Rules (DESIGN.md, "Rules learned"): a verdict waits for at least HEARTBEAT_MISSED_BEATS missed
beats of the run's own interval; a run that never beat is judged from its start time (or, before
it started, from when it entered its state); a run with heartbeats off is judged by the
heartbeat of the agent that claimed it, so it is never killed just for being quiet.

Each function costs a constant number of queries: an indexed candidate query (older than the
threshold), then the per-row interval rule in Python over those candidates only.
"""

from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, Subquery

from runs.models import Agent, AgentStatus, TaskRun


def missed_beats():
    return settings.ORCHESTRATOR["HEARTBEAT_MISSED_BEATS"]


def deadline(now, threshold_seconds, interval_seconds):
    """The oldest sign of life still counted as alive: threshold, or the missed beats if longer."""
    return now - timedelta(seconds=max(threshold_seconds, missed_beats() * (interval_seconds or 0)))


def own_beat_older_than(cutoff, prefix=""):
    """Q: the row's last heartbeat, else its start time, else its state change, is before `cutoff`."""
    p = prefix
    return (
        Q(**{f"{p}last_heartbeat__lt": cutoff})
        | Q(**{f"{p}last_heartbeat__isnull": True, f"{p}start_time__lt": cutoff})
        | Q(**{f"{p}last_heartbeat__isnull": True, f"{p}start_time__isnull": True, f"{p}state_changed__lt": cutoff})
    )


def silent_agent_ids(now, threshold_seconds):
    """Ids of agents OFFLINE, or whose last heartbeat (or registration) is past their deadline."""
    cutoff = now - timedelta(seconds=threshold_seconds)
    rows = Agent.objects.filter(
        Q(status=AgentStatus.OFFLINE) | Q(last_heartbeat__lt=cutoff) | Q(last_heartbeat__isnull=True, created__lt=cutoff)
    ).values_list("id", "status", "last_heartbeat", "created", "heartbeat_interval")
    return [
        agent_id for agent_id, status, beat, created, interval in rows
        if status == AgentStatus.OFFLINE or (beat or created) < deadline(now, threshold_seconds, interval)
    ]


def _sign_of_life(row, prefix=""):
    return row[f"{prefix}last_heartbeat"] or row[f"{prefix}start_time"] or row[f"{prefix}state_changed"]


def task_runs_beating_since(cutoff):
    """Exists: a task run of the flow run (OuterRef pk) beat at or after `cutoff`.

    Task runs' heartbeats are signs of life of their flow run, whatever state the task run is in
    now: one the Zombie Killer failed a minute ago still beat when it beat, so a flow run is
    judged on its own threshold and Lazarus keeps acting first. Judged here, by the services, so
    the heartbeat endpoints stay one UPDATE each; served by the (flow_run, state) index for the
    few silent candidates only.
    """
    return Exists(TaskRun.objects.filter(flow_run=OuterRef("pk"), last_heartbeat__gte=cutoff))


def _latest_task_beat():
    """Subquery: the latest heartbeat of the flow run's (OuterRef pk) task runs."""
    return Subquery(TaskRun.objects.filter(flow_run=OuterRef("pk"), last_heartbeat__isnull=False)
                    .order_by("-last_heartbeat").values("last_heartbeat")[:1])


def silent_flow_run_ids(queryset, now, threshold_seconds, limit):
    """Ids (at most `limit`) of the flow runs of `queryset` that have gone silent.

    A flow run is silent when neither it nor any of its task runs beat past its deadline
    (with heartbeats off: when its agent is silent). Still one candidate query: the task runs'
    beats are judged inside it.
    """
    cutoff = now - timedelta(seconds=threshold_seconds)
    silent_agents = silent_agent_ids(now, threshold_seconds)
    candidates = queryset.filter(
        (Q(heartbeat_interval__isnull=False) & own_beat_older_than(cutoff))
        | Q(heartbeat_interval__isnull=True, agent_id__in=silent_agents)
        | (Q(heartbeat_interval__isnull=True, agent__isnull=True) & own_beat_older_than(cutoff))
    ).filter(~task_runs_beating_since(cutoff)).annotate(task_beat=_latest_task_beat()).values(
        "pk", "last_heartbeat", "start_time", "state_changed", "heartbeat_interval", "task_beat")
    ids = []
    for row in candidates.order_by("pk")[: limit * 2]:
        interval = row["heartbeat_interval"]
        # A slow heartbeat's deadline is older than the cutoff: a task run's beat between the two counts.
        alive = max(_sign_of_life(row), row["task_beat"] or _sign_of_life(row))
        if interval is None or alive < deadline(now, threshold_seconds, interval):
            ids.append(row["pk"])
    return ids[:limit]


def silent_task_run_ids(queryset, now, threshold_seconds, limit):
    """Ids (at most `limit`) of the task runs of `queryset` that have gone silent.

    A task run's interval is its flow run's; under a flow run with heartbeats off, the task run
    must also have a silent (or no) agent.
    """
    cutoff = now - timedelta(seconds=threshold_seconds)
    silent_agents = silent_agent_ids(now, threshold_seconds)
    candidates = queryset.filter(own_beat_older_than(cutoff)).filter(
        Q(flow_run__heartbeat_interval__isnull=False)
        | Q(flow_run__agent__isnull=True)
        | Q(flow_run__agent_id__in=silent_agents)
    ).values("pk", "last_heartbeat", "start_time", "state_changed", "flow_run__heartbeat_interval")
    ids = []
    for row in candidates.order_by("pk")[: limit * 2]:
        interval = row["flow_run__heartbeat_interval"]
        if interval is None or _sign_of_life(row) < deadline(now, threshold_seconds, interval):
            ids.append(row["pk"])
    return ids[:limit]
