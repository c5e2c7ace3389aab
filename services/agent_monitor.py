"""agent-monitor: agents silent for HEARTBEAT_MISSED_BEATS (3) × their interval → OFFLINE.

The SUBMITTED runs of offline agents that never started go back to SCHEDULED, claimable by any
other agent (they keep their due time, so they are picked up first).
"""

from datetime import timedelta
from functools import reduce
from operator import or_

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from events.emit import emit, make, resource
from runs.models import Actor, Agent, AgentStatus, FlowRun, State
from runs.states import transition_flow_runs
from services.liveness import deadline
from services.registry import register


def _silent_online_agents(now):
    """(id, last_heartbeat) of ONLINE agents past their deadline; registration counts as the first beat."""
    shortest = now - timedelta(seconds=settings.ORCHESTRATOR["HEARTBEAT_MISSED_BEATS"])
    rows = Agent.objects.filter(status=AgentStatus.ONLINE).filter(
        Q(last_heartbeat__lt=shortest) | Q(last_heartbeat__isnull=True, created__lt=shortest)
    ).values_list("id", "last_heartbeat", "created", "heartbeat_interval")
    return [(agent_id, beat) for agent_id, beat, created, interval in rows
            if (beat or created) < deadline(now, 0, interval)]


@register("agent-monitor", interval_setting="AGENT_MONITOR_LOOP_SECONDS",
          description="Marks silent agents OFFLINE and hands their unstarted runs back to the queue.")
def run_once(now):
    """Mark silent agents OFFLINE, reschedule their never-started SUBMITTED runs; returns counts."""
    silent = _silent_online_agents(now)
    offline = []
    if silent:
        # Conditional on the heartbeat we judged: an agent that beat meanwhile stays ONLINE.
        seen = reduce(or_, (Q(pk=agent_id, last_heartbeat=beat) if beat else Q(pk=agent_id, last_heartbeat__isnull=True)
                            for agent_id, beat in silent))
        with transaction.atomic():
            offline = list(Agent.objects.filter(seen, status=AgentStatus.ONLINE).select_for_update(skip_locked=True)
                           .values("pk", "workspace_id", "name"))
            Agent.objects.filter(pk__in=[a["pk"] for a in offline]).update(status=AgentStatus.OFFLINE)
            emit([make(a["workspace_id"], "agent.offline", resource("agent", a["pk"], a["name"]),
                       payload={"reason": "missed heartbeats"}, occurred=now) for a in offline])
    # Not limited to the agents marked now: a run claimed just as its agent went offline is caught next pass.
    orphaned = FlowRun.objects.alive().filter(state=State.SUBMITTED, start_time__isnull=True,
                                              agent__status=AgentStatus.OFFLINE)
    returned = transition_flow_runs(
        orphaned, State.SCHEDULED, actor=Actor.AGENT_MONITOR, now=now, updates={"agent": None},
        extra_fields=("agent__name",), limit=settings.ORCHESTRATOR["RECOVERY_BATCH_SIZE"],
        message=lambda row: f"Back to the queue: its agent {row['agent__name']} went offline before starting it.",
    )
    return {"agents_offline": len(offline), "runs_rescheduled": len(returned)}
