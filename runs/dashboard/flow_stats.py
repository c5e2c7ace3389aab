"""A flow's record for its dashboard page: runs per day by outcome, success rate, durations.

Each figure reads a bounded slice: the days of the window through the (flow, scheduled_start)
index, and durations from the newest DURATION_SAMPLE finished runs, so a flow with millions of
runs costs what one with a thousand does.
"""

import math
from datetime import timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncDate

from runs.models import FlowRun, State

DAYS = 14
DURATION_SAMPLE = 1000
FAILED_STATES = (State.FAILED, State.CRASHED)


def percentile(sorted_values, fraction):
    """The value below which `fraction` of `sorted_values` lie (nearest rank); None when empty."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def runs_per_day(flow, now, days=DAYS):
    """[{day, completed, failed, other, total, heights…}] for the last `days` days (UTC), oldest first,
    every day present."""
    since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = (FlowRun.objects.alive().filter(flow=flow, scheduled_start__gte=since, scheduled_start__lte=now)
            .annotate(day=TruncDate("scheduled_start")).values("day")
            .annotate(completed=Count("pk", filter=Q(state=State.COMPLETED)),
                      failed=Count("pk", filter=Q(state__in=FAILED_STATES)), total=Count("pk")))
    by_day = {row["day"]: row for row in rows}
    out = []
    for i in range(days):
        day = (since + timedelta(days=i)).date()
        row = by_day.get(day, {"completed": 0, "failed": 0, "total": 0})
        out.append({"day": day, "completed": row["completed"], "failed": row["failed"],
                    "other": row["total"] - row["completed"] - row["failed"], "total": row["total"]})
    peak = max((row["total"] for row in out), default=0) or 1
    for row in out:
        for part in ("completed", "failed", "other"):
            row[f"{part}_pct"] = round(row[part] / peak * 100, 2)
    return out


def record(flow, now):
    """Success rate and durations over the newest finished runs (at most DURATION_SAMPLE)."""
    finished = list(FlowRun.objects.alive().filter(flow=flow, state__in=[State.COMPLETED, *FAILED_STATES],
                                                   scheduled_start__lte=now)
                    .order_by("-scheduled_start", "-id").values_list("state", "start_time", "end_time")
                    [:DURATION_SAMPLE])
    completed = sum(1 for state, _, _ in finished if state == State.COMPLETED)
    durations = sorted((end - start).total_seconds() for state, start, end in finished
                       if state == State.COMPLETED and start and end and end >= start)
    return {
        "sample": len(finished), "completed": completed, "failed": len(finished) - completed,
        "success_rate": round(completed / len(finished) * 100, 1) if finished else None,
        "p50": percentile(durations, 0.5), "p90": percentile(durations, 0.9), "p99": percentile(durations, 0.99),
        "durations": len(durations),
    }
