"""work-queue-monitor: judges every work queue healthy or not, and says so when the verdict changes.

A queue is healthy when it is not paused, an agent polled it within WORK_QUEUE_HEALTH_POLL_SECONDS
(300) and none of its runs is LATE. The verdict is stored on the queue (`health`,
`health_changed`) and each change emits `work-queue.healthy` or `work-queue.unhealthy`; an
unchanged verdict emits nothing. Set-based: a pass costs the same few queries for 3 queues or
3,000. Safe when two copies run at once: the queues to flip are read under row locks that the
other copy skips, and flipped by an UPDATE conditional on the old verdict, so each change is
stored and emitted once.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q

from events.emit import emit, make, resource
from runs.models import FlowRun, QueueHealth, State, WorkQueue
from services.registry import register


def healthy_condition(now):
    """The Q a queue meets when it is healthy at `now` (a late run is a run of the queue in LATE)."""
    polled_since = now - timedelta(seconds=settings.ORCHESTRATOR["WORK_QUEUE_HEALTH_POLL_SECONDS"])
    late = FlowRun.objects.alive().filter(work_queue=OuterRef("pk"), state=State.LATE)
    return Q(paused=False, last_polled__gte=polled_since) & ~Exists(late)


def _why(row, now):
    """The reasons of an unhealthy verdict, in words, for the event's payload."""
    reasons = []
    if row["paused"]:
        reasons.append("paused")
    limit = settings.ORCHESTRATOR["WORK_QUEUE_HEALTH_POLL_SECONDS"]
    if row["last_polled"] is None:
        reasons.append("never polled")
    elif (now - row["last_polled"]).total_seconds() > limit:
        reasons.append(f"not polled for over {limit} s")
    if row["late"]:
        reasons.append("has late runs")
    return reasons


def _flip(queues, verdict, now):
    """Store `verdict` on the queues of `queues` that do not have it; returns their rows."""
    late = Exists(FlowRun.objects.alive().filter(work_queue=OuterRef("pk"), state=State.LATE))
    with transaction.atomic():
        # Locked while judged: another copy of the pass skips these rows (they are this copy's to flip).
        rows = list(queues.exclude(health=verdict).annotate(late=late)
                    .select_for_update(skip_locked=True, of=("self",))
                    .values("pk", "workspace_id", "name", "health", "paused", "last_polled", "late"))
        if not rows:
            return []
        # Conditional on the old verdict, so nothing is flipped twice even without row locks (SQLite).
        WorkQueue.objects.filter(pk__in=[row["pk"] for row in rows]).exclude(health=verdict).update(
            health=verdict, health_changed=now)
        name = "work-queue.healthy" if verdict == QueueHealth.HEALTHY else "work-queue.unhealthy"
        emit([make(row["workspace_id"], name, resource("work-queue", row["pk"], row["name"]),
                   payload={"from": row["health"], "to": verdict,
                            **({"reasons": _why(row, now)} if verdict == QueueHealth.UNHEALTHY else {})},
                   occurred=now) for row in rows])
    return rows


@register("work-queue-monitor", interval_setting="WORK_QUEUE_MONITOR_LOOP_SECONDS",
          description="Judges each work queue healthy (not paused, polled lately, no late runs) and emits changes.")
def run_once(now):
    """Store each queue's health verdict; returns how many queues became healthy and unhealthy."""
    healthy = healthy_condition(now)
    became_healthy = _flip(WorkQueue.objects.filter(healthy), QueueHealth.HEALTHY, now)
    became_unhealthy = _flip(WorkQueue.objects.exclude(healthy), QueueHealth.UNHEALTHY, now)
    return {"healthy": len(became_healthy), "unhealthy": len(became_unhealthy)}
