"""The dashboard's reads. Each is a fixed number of queries whatever the number of rows:
counts are aggregated in SQL and every list is cut to a window."""

from datetime import timedelta

from django.db.models import Count, Q
from django.db.models.functions import Coalesce

from runs.access import scoped
from runs.models import (
    TERMINAL_STATES,
    Agent,
    AgentStatus,
    FlowRun,
    Log,
    State,
    StateChange,
    TaskRun,
    WorkQueue,
    Workspace,
)

from . import display

LIST_LIMIT = 50
TIMELINE_LIMIT = 300
TIMELINE_LOOKBACK = timedelta(days=1)
RECOVERY_SOURCES = ("lazarus", "zombie-killer")
# What a timeline bar, its group and its scatter dot show: loading every column of the 600 runs
# read (their parameters among them) was a third of the page's time.
TIMELINE_FIELDS = ("id", "name", "state", "scheduled_start", "start_time", "end_time", "last_heartbeat",
                   "flow__name", "work_queue__name")


def alive_runs(request):
    """Runs the dashboard lists: not soft-deleted, not of a flow or schedule being deleted."""
    return scoped(request, FlowRun.objects.listed())


def history_kept(request, limit=20):
    """[(workspace, how long its history is kept, in words)] for the workspaces the person sees."""
    workspaces = scoped(request, Workspace.objects.select_related("account").order_by("account__slug", "slug"), "id")
    return [(str(w), w.retention_sentence()) for w in workspaces[:limit]]


def runs_by_state(request, since, now):
    """[(state, count)] for every state (zero when none), in one query: the unfinished states
    count every run in them now (a SCHEDULED count that left out tomorrow's runs read 0 while
    forty waited); the finished states count the runs due between `since` and `now` (indexed on
    workspace, state and due time)."""
    unfinished = [state for state in State if state not in TERMINAL_STATES]
    # Two counts in one UNION ALL, not one count over an OR: each half is an index-only range read
    # of flowrun_listed_state_time, where the OR made PostgreSQL read the runs from the table.
    runs = alive_runs(request).order_by()
    now_in = runs.filter(state__in=unfinished)
    lately = runs.filter(state__in=TERMINAL_STATES, scheduled_start__gte=since, scheduled_start__lte=now)
    counts = dict(
        now_in.values_list("state").annotate(n=Count("*")).values_list("state", "n").union(
            lately.values_list("state").annotate(n=Count("*")).values_list("state", "n"), all=True)
    )
    return [(state, counts.get(state.value, 0)) for state in State]


def late_runs(request, limit=LIST_LIMIT):
    """LATE runs, longest overdue first, and how many there are in all."""
    queryset = alive_runs(request).filter(state=State.LATE)
    return list(queryset.select_related("flow").order_by("scheduled_start")[:limit]), queryset.count()


def heartbeat_runs(request, now, limit=LIST_LIMIT):
    """Active runs with the verdict on their heartbeat, the most silent first; and the total."""
    queryset = alive_runs(request).filter(state__in=display.HEARTBEAT_STATES)
    rows = list(
        queryset.select_related("flow", "agent")
        .annotate(beat=Coalesce("last_heartbeat", "start_time", "state_changed"))
        .order_by("beat")[:limit]
    )
    threshold = display.zombie_threshold_seconds()
    return [(run, display.heartbeat_of(run, now, threshold)) for run in rows], queryset.count()


def agent_counts(request):
    """{'ONLINE': n, 'OFFLINE': n}."""
    counts = dict(scoped(request, Agent.objects.all()).values_list("status").annotate(n=Count("id")))
    return {status.value: counts.get(status.value, 0) for status in AgentStatus}


def timeline_runs(request, start, end, flow_id=None, queue_id=None, limit=None):
    """Runs whose bar meets the window [start, end]: started (or due) before its end, and not
    finished before its start. Returns (runs, more): the first `limit` by start, and whether
    there are more (counted no further: a count would read every run of the window).

    Both read the index of bars in start order (flowrun_bar_unfinished, flowrun_bar_finished) and
    stop after `limit` + 1, so the cost follows the page, not the table: runs not finished,
    whatever their age; finished runs that started (or were due) at most TIMELINE_LOOKBACK before
    the window. (A finished run that started earlier, i.e. one that ran longer than a day, is not
    drawn.) The finished runs' ids come from an index-only scan: the runs of the look-back day
    that ended before the window are skipped in the index, not read from the table.
    """
    limit = limit or TIMELINE_LIMIT
    base = alive_runs(request).annotate(bar_start=Coalesce("start_time", "scheduled_start"))
    if flow_id:
        base = base.filter(flow_id=flow_id)
    if queue_id:
        base = base.filter(work_queue_id=queue_id)
    unfinished = base.filter(state__in=[s for s in State if s not in TERMINAL_STATES],
                              scheduled_start__lte=end, bar_start__lte=end) \
        .exclude(state=State.SCHEDULED, scheduled_start__lt=start)  # long-due SCHEDULED runs are LATE's job
    first_finished = base.filter(
        state__in=TERMINAL_STATES, bar_start__gte=start - TIMELINE_LOOKBACK, bar_start__lte=end,
        scheduled_start__gte=start - TIMELINE_LOOKBACK, scheduled_start__lte=end,
    ).filter(Q(end_time__isnull=True) | Q(end_time__gte=start)).order_by("bar_start", "id").values("pk")[: limit + 1]
    finished = base.filter(pk__in=first_finished)
    runs = []
    for queryset in (unfinished, finished):
        runs += queryset.select_related("flow", "work_queue").only(*TIMELINE_FIELDS).order_by("bar_start", "id")[
            : limit + 1]
    runs.sort(key=lambda run: (run.bar_start, str(run.pk)))
    return runs[:limit], len(runs) > limit


def run_history(run):
    """The run's own transitions (task runs' are on their bars), oldest first."""
    return list(run.history.filter(task_run__isnull=True).select_related("user", "agent").order_by("timestamp", "id"))


def run_task_runs(run, limit=200):
    return list(TaskRun.objects.filter(flow_run=run).order_by("start_time", "created")[:limit])


def queues_with_load(request, now):
    """Work queues with their runs in use (SUBMITTED/RUNNING) and late runs, counted in SQL over
    the active and late runs only (partial indexes), not over every run a queue ever had."""
    queues = list(scoped(request, WorkQueue.objects.all()).select_related("workspace").order_by("name", "id")[:200])
    counts = {}
    for state_group, key in (((State.SUBMITTED, State.RUNNING), "in_use"), ((State.LATE,), "late")):
        # Grouped over the states only (index on workspace, state), not looked up per queue: a
        # queue's index would read every run the queue ever had. COUNT(*), not of ids: the index
        # flowrun_listed_state_time holds the queue but not the id, so the count reads only it.
        rows = alive_runs(request).filter(state__in=state_group) \
            .values_list("work_queue_id").annotate(n=Count("*")).values_list("work_queue_id", "n")
        for queue_id, n in rows:
            counts[(queue_id, key)] = n
    for queue in queues:
        queue.in_use = counts.get((queue.pk, "in_use"), 0)
        queue.late = counts.get((queue.pk, "late"), 0)
    return queues


def agents_with_queues(request):
    return list(scoped(request, Agent.objects.all()).prefetch_related("queues").order_by("status", "name")[:200])


def recovery_interventions(request, since, flow_id=None, limit=200):
    """Every Lazarus and Zombie Killer act since `since`, newest first, each once.

    A service's act leaves a state change and, for the why, a log line with the same run, task run
    and moment; the two are one act and make one row. Each row: time, source, run, task_run,
    transition ("RUNNING → SCHEDULED" or ""), reason, kind, attempt (which act of that source on
    that run this was; 1 = the first ever). The runs and task runs carry only what a row shows.
    """
    logs = scoped(request, Log.objects.filter(source__in=RECOVERY_SOURCES, timestamp__gte=since))
    changes = scoped(
        request, StateChange.objects.filter(actor__in=RECOVERY_SOURCES, timestamp__gte=since), "flow_run__workspace_id"
    )
    if flow_id:
        logs = logs.filter(flow_run__flow_id=flow_id)
        changes = changes.filter(flow_run__flow_id=flow_id)
    shown = ("flow_run", "task_run", "flow_run__name", "flow_run__flow__name", "task_run__name", "task_run__task_key")
    acts = {}
    for change in changes.select_related("flow_run__flow", "task_run").only(
            "from_state", "to_state", "message", "actor", "timestamp", *shown).order_by("-timestamp", "-id")[:limit]:
        transition = f"{change.from_state or '—'} → {change.to_state}"
        acts[(change.flow_run_id, change.task_run_id, change.actor, change.timestamp)] = {
            "time": change.timestamp, "source": change.actor, "run": change.flow_run, "task_run": change.task_run,
            "transition": transition, "message": change.message, "kind": "state change"}
    for log in logs.select_related("flow_run__flow", "task_run").only("source", "message", "timestamp", *shown) \
            .order_by("-timestamp", "-id")[:limit]:
        act = acts.get((log.flow_run_id, log.task_run_id, log.source, log.timestamp))
        if act is None:
            acts[(log.flow_run_id, log.task_run_id, log.source, log.timestamp, log.pk)] = {
                "time": log.timestamp, "source": log.source, "run": log.flow_run, "task_run": log.task_run,
                "transition": "", "message": log.message, "kind": "log"}
        elif act["kind"] == "state change":
            act["kind"] = "state change and log"
            if log.message and log.message != act["message"]:
                act["message"] = f"{act['message']} — {log.message}" if act["message"] else log.message
    rows = sorted(acts.values(), key=lambda row: row["time"], reverse=True)[:limit]
    for row in rows:
        row["reason"] = ": ".join(part for part in (row["transition"], row.pop("message")) if part)
    number_attempts(rows)
    return rows


def number_attempts(rows):
    """Set each row's `attempt`: which act of its source on its run it was (1 = the first ever).

    Two queries over the shown runs only; a run has at most a handful of interventions (Lazarus
    gives up after its tenth), so this reads little whatever the size of the tables. A state
    change and its log line at one moment are one act, as in the rows.
    """
    run_ids = {row["run"].pk for row in rows}
    moments = {}
    for run_id, task_run_id, source, at in Log.objects.filter(
            flow_run_id__in=run_ids, source__in=RECOVERY_SOURCES).values_list(
            "flow_run_id", "task_run_id", "source", "timestamp"):
        moments.setdefault((run_id, source), set()).add((task_run_id, at))
    for run_id, task_run_id, actor, at in StateChange.objects.filter(
            flow_run_id__in=run_ids, actor__in=RECOVERY_SOURCES).values_list(
            "flow_run_id", "task_run_id", "actor", "timestamp"):
        moments.setdefault((run_id, actor), set()).add((task_run_id, at))
    for row in rows:
        earlier = moments.get((row["run"].pk, row["source"]), ())
        row["attempt"] = sum(1 for _, at in earlier if at <= row["time"])


def period_start(now, hours):
    return now - timedelta(hours=hours)


STORY_LIMIT = 200


def recovery_story_of(run):
    """What the services did to `run` (runs/dashboard/attempts.py): their state changes of the run
    and its task runs, and their log lines, the first STORY_LIMIT of each."""
    from .attempts import RECOVERY_ACTORS, recovery_story

    changes = list(StateChange.objects.filter(flow_run=run, actor__in=RECOVERY_ACTORS)
                   .order_by("timestamp", "id")[:STORY_LIMIT])
    logs = list(Log.objects.filter(flow_run=run, source__in=[str(a) for a in RECOVERY_ACTORS])
                .order_by("timestamp", "id")[:STORY_LIMIT])
    return recovery_story(changes, logs)
