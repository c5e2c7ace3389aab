"""Dashboard pages. Each full page includes its live partial; an htmx poll gets the partial alone."""

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from runs.access import may, scoped, workspace_ids_for
from runs.models import AuditEntry, Flow, FlowRun, Role, WorkQueue

from . import display, markup, queries
from .attempts import attempts_of
from .live import PART_EVENTS, stream_url

# Choices the filters offer, in hours.
RECOVERY_PERIODS = ((24, "24 hours"), (168, "7 days"), (720, "30 days"))


def dashboard_login_required(view):
    return login_required(view, login_url="dashboard:login")


def render_live(request, page, partial, context):
    """The full page, or only its live partial when htmx asks (polling, filter changes)."""
    template = partial if request.htmx and not request.htmx.boosted else page
    return render(request, template, context)


def int_param(request, name, default=None, choices=None):
    try:
        value = int(request.GET.get(name, ""))
    except ValueError:
        return default
    if choices is not None and value not in choices:
        return default
    return value


def service_health(now):
    """Towel's verdict per service, or None while Towel has no health report to give."""
    try:
        from services.towel import health_report
    except (ImportError, AttributeError):
        return None
    try:
        report = health_report(now)
    except Exception:  # noqa: BLE001 - the overview must render even when the report breaks
        return {"(health report)": {"healthy": False, "last_error": "the health report itself failed",
                                    "last_success": None, "last_error_at": None, "interval_seconds": 0}}
    return dict(sorted(report.items()))


@dashboard_login_required
def overview(request):
    now = timezone.now()
    heartbeats, running_total = queries.heartbeat_runs(request, now)
    late, late_total = queries.late_runs(request)
    context = {
        "nav": "overview", "now": now,
        "by_state": queries.runs_by_state(request, now - timedelta(hours=24), now),
        "late": late, "late_total": late_total,
        "heartbeats": heartbeats, "running_total": running_total,
        "agents": queries.agent_counts(request),
        "services": service_health(now),
        "threshold": display.format_age(display.zombie_threshold_seconds()),
        "history_kept": queries.history_kept(request),
        "stream_url": stream_url(PART_EVENTS["overview"], since=now),
    }
    return render_live(request, "dashboard/overview.html", "dashboard/_overview_live.html", context)


def timeline_bars(runs, start, end, now):
    """Geometry of each run's bar in percent of the window, the marks a person looks for, and its row's
    markup (markup.py)."""
    span = (end - start).total_seconds()
    bars = []
    for run in runs:
        begin = run.start_time or run.scheduled_start
        finish = run.end_time or (now if begin <= now else begin)
        left = display.percent(begin, start, span)
        width = max(display.percent(finish, start, span) - left, 0.4)
        beat = None
        if run.last_heartbeat and run.end_time is None and start <= run.last_heartbeat <= end:
            beat = display.percent(run.last_heartbeat, start, span)
        bars.append({
            "run": run, "left": left, "width": round(min(width, 100 - left) or 0.4, 3), "heartbeat": beat,
            "css": display.state_css(run.state), "open": run.end_time is None and begin <= now,
            "alarm": run.state in ("LATE", "CRASHED", "FAILED"),
        })
    now_left = display.percent(now, start, span) if start <= now <= end else None
    for bar in bars:
        bar["html"] = markup.bar_row(bar, now_left)
    return bars


# The timeline's windows, in minutes, and what the window list calls them.
TIMELINE_WINDOWS = ((15, "15 min"), (60, "1 h"), (360, "6 h"), (1440, "24 h"), (4320, "3 days"), (10080, "7 days"))
TIMELINE_GROUPS = (("", "no grouping"), ("flow", "flow"), ("queue", "work queue"))
WINDOW_END_FORMAT = "%Y-%m-%dT%H:%M:%S"


def timeline_window(request, now):
    """(minutes, start, end, pinned): the window the URL asks for. `window` in minutes (or the
    older `hours`), `end` a UTC time when the person panned or zoomed away from now; without
    it the window ends a little after now, so the next SCHEDULED runs show."""
    choices = {minutes for minutes, _ in TIMELINE_WINDOWS}
    minutes = int_param(request, "window", None, choices)
    if minutes is None:
        hours = int_param(request, "hours", None)
        minutes = hours * 60 if hours and hours * 60 in choices else 360
    span = timedelta(minutes=minutes)
    end = None
    raw = request.GET.get("end", "")
    if raw:
        try:
            end = datetime.strptime(raw[:19], WINDOW_END_FORMAT).replace(tzinfo=dt_timezone.utc)
        except ValueError:
            end = None
    pinned = end is not None
    if end is None:
        end = now + span / 12
    return minutes, end - span, end, pinned


def timeline_links(request, minutes, start, end):
    """Query strings for zooming (the next window, same centre) and panning (half a window)."""
    sizes = [m for m, _ in TIMELINE_WINDOWS]
    centre = start + (end - start) / 2

    def link(new_minutes, new_end):
        query = request.GET.copy()
        query["window"] = str(new_minutes)
        query.pop("hours", None)
        query["end"] = new_end.strftime(WINDOW_END_FORMAT)
        return query.urlencode()

    index = sizes.index(minutes)
    links = {"earlier": link(minutes, end - (end - start) / 2), "later": link(minutes, end + (end - start) / 2)}
    if index > 0:
        links["zoom_in"] = link(sizes[index - 1], centre + timedelta(minutes=sizes[index - 1]) / 2)
    if index < len(sizes) - 1:
        links["zoom_out"] = link(sizes[index + 1], centre + timedelta(minutes=sizes[index + 1]) / 2)
    now_query = request.GET.copy()
    now_query.pop("end", None)
    links["now"] = now_query.urlencode()
    return links


def group_bars(bars, group):
    """Bars ordered by their group (flow or queue name) then start, with a heading where a group
    begins: [(heading or None, bar)]."""
    if not group:
        return [(None, bar) for bar in bars]
    name_of = (lambda run: run.flow.name) if group == "flow" else (lambda run: run.work_queue.name if run.work_queue
                                                                     else "(no queue)")
    ordered = sorted(bars, key=lambda bar: name_of(bar["run"]))  # stable: each group keeps start order
    rows, current = [], object()
    for bar in ordered:
        name = name_of(bar["run"])
        rows.append((name if name != current else None, bar))
        current = name
    return rows


def duration_scatter(runs, start, end, width=1000, height=160):
    """Points of the finished runs of the window: x their start, y their duration (square root
    scale, so one long run does not flatten the rest), in SVG units; with the axis's top value."""
    finished = [run for run in runs if run.start_time and run.end_time and start <= run.start_time <= end]
    if not finished:
        return {"points": [], "longest": None}
    span = max((end - start).total_seconds(), 1)
    longest = max(max((run.end_time - run.start_time).total_seconds() for run in finished), 1)
    points = []
    for run in finished:
        seconds = max((run.end_time - run.start_time).total_seconds(), 0)
        points.append({
            "run": run, "css": display.state_css(run.state), "duration": display.format_age(seconds),
            "x": round((run.start_time - start).total_seconds() / span * width, 1),
            "y": round(height - (seconds / longest) ** 0.5 * (height - 8) - 4, 1),
        })
        points[-1]["html"] = markup.scatter_dot(points[-1])
    return {"points": points, "longest": display.format_age(longest), "width": width, "height": height}


@dashboard_login_required
def timeline(request):
    now = timezone.now()
    minutes, start, end, pinned = timeline_window(request, now)
    flow_id = int_param(request, "flow")
    queue_id = int_param(request, "queue")
    group = request.GET.get("group", "")
    group = group if group in dict(TIMELINE_GROUPS) else ""
    runs, more = queries.timeline_runs(request, start, end, flow_id, queue_id)
    span = (end - start).total_seconds()
    long_window = minutes >= 4320
    ticks = [{"left": display.percent(start + (end - start) * i / 6, start, span),
              "at": start + (end - start) * i / 6} for i in range(7)]
    context = {
        "nav": "timeline", "now": now, "window": minutes, "windows": TIMELINE_WINDOWS, "start": start, "end": end,
        "pinned": pinned, "links": timeline_links(request, minutes, start, end), "tick_format": (
            "m-d H:i" if long_window else "H:i:s" if minutes <= 15 else "H:i"),
        "bars": (bars := timeline_bars(runs, start, end, now)), "rows": group_bars(bars, group), "more": more, "limit": queries.TIMELINE_LIMIT,
        "now_left": display.percent(now, start, span) if start <= now <= end else None, "ticks": ticks,
        "scatter": duration_scatter(runs, start, end), "group": group, "groups": TIMELINE_GROUPS,
        "flows": scoped(request, Flow.objects.order_by("name")).only("id", "name")[:500],
        "queues": scoped(request, WorkQueue.objects.order_by("name")).only("id", "name")[:500],
        "flow_id": flow_id, "queue_id": queue_id,
        "stream_url": stream_url(PART_EVENTS["timeline"], since=now),
    }
    return render_live(request, "dashboard/timeline.html", "dashboard/_timeline_live.html", context)


@dashboard_login_required
def run_detail(request, pk):
    from . import run_actions  # it imports this module's login decorator

    now = timezone.now()
    run = scoped(request, FlowRun.objects.listed().select_related(
        "flow", "agent", "work_queue", "created_by", "created_by_key")).filter(pk=pk).first()
    if run is None:
        raise Http404("No such run.")
    history = queries.run_history(run)
    attempts = attempts_of(run, history, queries.run_task_runs(run))
    chosen = int_param(request, "attempt", None, {a.number for a in attempts}) if len(attempts) > 1 else None
    task_runs = [t for a in attempts for t in a.task_runs if chosen is None or a.number == chosen]
    task_runs.sort(key=lambda t: (t.start_time is None, t.start_time or t.created))
    # The Gantt spans the run (or its task runs, when they reach further).
    moments = [m for t in task_runs for m in (t.start_time, t.end_time) if m] + [
        m for m in (run.start_time, run.end_time) if m]
    still_open = bool(run.start_time and not run.end_time) or any(t.start_time and not t.end_time for t in task_runs)
    gantt_start = min(moments) if moments else None
    gantt_end = max(moments + ([now] if still_open else [])) if moments else None
    span = max((gantt_end - gantt_start).total_seconds(), 1) if moments else 1
    gantt = [{
        "task": t, "css": display.state_css(t.state),
        "left": display.percent(t.start_time, gantt_start, span) if t.start_time else 0,
        "width": max(display.percent(t.end_time or now, gantt_start, span)
                     - display.percent(t.start_time, gantt_start, span), 0.5) if t.start_time else 0,
    } for t in task_runs]
    for row in gantt:
        row["html"] = markup.gantt_row(row)
    context = {
        "nav": "timeline", "now": now, "run": run, "css": display.state_css(run.state),
        "heartbeat": display.heartbeat_of(run, now), "history": history, "gantt": gantt,
        "attempts": attempts, "attempt": chosen, "story": queries.recovery_story_of(run),
        "gantt_start": gantt_start, "gantt_end": gantt_end,
        "threshold": display.format_age(display.zombie_threshold_seconds()),
        # The run's own events and its task runs' (heartbeats included: the page shows the last one).
        "stream_url": stream_url(items=[("about", str(run.pk))], since=now),
        "run_actions": run_actions.allowed_actions(run.state) if may(request, Role.OPERATOR, run.workspace_id) else [],
    }
    if not (request.htmx and not request.htmx.boosted):
        from .logs import log_context  # the log section is the page's own, outside the live part

        context.update(log_context(request, run, attempts))
    return render_live(request, "dashboard/run_detail.html", "dashboard/_run_live.html", context)


@dashboard_login_required
def agents(request):
    now = timezone.now()
    agent_rows = [{"agent": a, "age": display.format_age((now - a.last_heartbeat).total_seconds())
                   if a.last_heartbeat else "never",
                   "healthy": a.status == "ONLINE" and a.last_heartbeat is not None
                   and (now - a.last_heartbeat).total_seconds() < 3 * a.heartbeat_interval}
                  for a in queries.agents_with_queues(request)]
    # The work-queue-monitor's rule, judged now (its stored verdict may be up to a pass old).
    # last_polled is exact to EVENTS_QUEUE_POLLED_EVERY_SECONDS only (runs/claiming.py record_poll).
    poll_window = settings.ORCHESTRATOR["WORK_QUEUE_HEALTH_POLL_SECONDS"]
    queue_rows = [{"queue": q, "polled": display.format_age((now - q.last_polled).total_seconds())
                   if q.last_polled else "never",
                   "healthy": not q.paused and q.late == 0 and q.last_polled is not None
                   and (now - q.last_polled).total_seconds() <= poll_window,
                   "can_operate": may(request, Role.OPERATOR, q.workspace_id)}
                  for q in queries.queues_with_load(request, now)]
    context = {"nav": "agents", "now": now, "agents": agent_rows, "queues": queue_rows,
               "stream_url": stream_url(PART_EVENTS["agents"], since=now)}
    return render_live(request, "dashboard/agents.html", "dashboard/_agents_live.html", context)


RECOVERY_SERVICES = ("lazarus", "zombie-killer")


def recovery_services_failing(now):
    """The recovery services that are unhealthy or whose last pass failed, with Towel's words:
    a review that shows no act while Lazarus itself crashes on every pass would mislead."""
    report = service_health(now) or {}
    failing = []
    for name, health in report.items():
        if name not in RECOVERY_SERVICES and not name.startswith("("):
            continue
        last_failed = health.get("last_error_at") and (
            not health.get("last_success") or health["last_error_at"] > health["last_success"])
        if not health.get("healthy", True) or last_failed:
            failing.append({**health, "name": name, "last_error_at": parse_datetime(health.get("last_error_at") or "")})
    return failing


@dashboard_login_required
def recovery(request):
    now = timezone.now()
    hours = int_param(request, "period", 168, {h for h, _ in RECOVERY_PERIODS})
    flow_id = int_param(request, "flow")
    context = {
        "nav": "recovery", "now": now, "period": hours, "periods": RECOVERY_PERIODS, "flow_id": flow_id,
        "flows": scoped(request, Flow.objects.order_by("name")).only("id", "name")[:500],
        "rows": [{**row, "html": markup.recovery_row(row)}
                 for row in queries.recovery_interventions(request, queries.period_start(now, hours), flow_id)],
        "failing": recovery_services_failing(now),
        "stream_url": stream_url(PART_EVENTS["recovery"], since=now),
    }
    return render_live(request, "dashboard/recovery.html", "dashboard/_recovery_live.html", context)


AUDIT_KINDS = (("membership", "members"), ("api_key", "API keys"), ("workspace", "settings"),
               ("schedule", "schedules"), ("work_queue", "work queues"), ("secret", "secrets"))
AUDIT_PAGE_ROWS = 200


@dashboard_login_required
def audit_trail(request):
    """The audit trail of the workspaces the user administers (runs/audit.py), newest first."""
    allowed = workspace_ids_for(request, Role.ADMIN)
    entries = AuditEntry.objects.select_related("workspace__account").order_by("-occurred", "-id")
    if allowed is not None:
        entries = entries.filter(workspace_id__in=allowed)
    kind = request.GET.get("kind", "")
    if kind in dict(AUDIT_KINDS):
        entries = entries.filter(target_type=kind)
    else:
        kind = ""
    return render(request, "dashboard/audit.html", {
        "nav": "audit", "now": timezone.now(), "entries": list(entries[:AUDIT_PAGE_ROWS]), "kinds": AUDIT_KINDS,
        "kind": kind, "admin_anywhere": allowed is None or bool(allowed)})
