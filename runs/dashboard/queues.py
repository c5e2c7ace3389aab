"""Work queues and agents from the dashboard: pause or resume a queue, set its concurrency limit
(operators, through the actions layer, audited); an agent's own page with its current and recent
runs and its health."""

from datetime import timedelta

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_POST

from runs import actions
from runs.access import may, scoped
from runs.audit import Who
from runs.models import TERMINAL_STATES, Agent, FlowRun, Role, State, WorkQueue

from . import display
from .views import dashboard_login_required

AGENTS_PAGE = "/dashboard/agents/"
RECENT_RUNS = 50
RECENT_WINDOW = timedelta(days=7)
LIMIT_MAX = 2**31 - 1


def operable_queue(request, pk):
    queue = scoped(request, WorkQueue.objects.all()).filter(pk=pk).first()
    if queue is None:
        raise Http404("No such work queue.")
    if not may(request, Role.OPERATOR, queue.workspace_id):
        raise PermissionDenied("Pausing, resuming and limiting a work queue need the operator role in its workspace.")
    return queue


@dashboard_login_required
@require_POST
def pause(request, pk):
    queue = actions.set_queue(operable_queue(request, pk), who=Who.of(request, "dashboard"), action="work_queue.pause",
                              paused=True)
    messages.success(request, f"Paused queue {queue.name}: it hands out no runs; runs already claimed carry on.")
    return HttpResponseRedirect(AGENTS_PAGE)


@dashboard_login_required
@require_POST
def resume(request, pk):
    queue = actions.set_queue(operable_queue(request, pk), who=Who.of(request, "dashboard"),
                              action="work_queue.resume", paused=False)
    messages.success(request, f"Resumed queue {queue.name}: agents get its due runs again.")
    return HttpResponseRedirect(AGENTS_PAGE)


@dashboard_login_required
@require_POST
def limit(request, pk):
    queue = operable_queue(request, pk)
    raw = request.POST.get("concurrency_limit", "").strip()
    if raw == "":
        value = None
    elif raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= LIMIT_MAX:
        value = int(raw)
    else:
        messages.error(request, f"concurrency_limit of {queue.name}: give a whole number from 0 up, or leave it "
                                f"empty for no limit (got {raw[:20]!r}).")
        return HttpResponseRedirect(AGENTS_PAGE)
    actions.set_queue(queue, who=Who.of(request, "dashboard"), action="work_queue.limit", concurrency_limit=value)
    messages.success(request, f"Queue {queue.name}: " + (
        f"at most {value} runs SUBMITTED or RUNNING at once." if value is not None else "no concurrency limit."))
    return HttpResponseRedirect(AGENTS_PAGE)


@dashboard_login_required
def agent_detail(request, pk):
    now = timezone.now()
    agent = scoped(request, Agent.objects.prefetch_related("queues")).filter(pk=pk).first()
    if agent is None:
        raise Http404("No such agent.")
    runs = FlowRun.objects.listed().filter(agent=agent).select_related("flow", "work_queue")
    # The unfinished states named, not "not finished": the agent's partial index of unfinished runs
    # answers only a query that names its states (flowrun_agent_unfinished).
    unfinished = [state for state in State if state not in TERMINAL_STATES]
    current = list(runs.filter(state__in=unfinished).order_by("-scheduled_start", "-id")[:RECENT_RUNS])
    recent = list(runs.filter(state__in=TERMINAL_STATES, scheduled_start__gte=now - RECENT_WINDOW)
                  .order_by("-scheduled_start", "-id")[:RECENT_RUNS])
    seen = (now - agent.last_heartbeat).total_seconds() if agent.last_heartbeat else None
    context = {
        "nav": "agents", "now": now, "agent": agent, "current": current, "recent": recent,
        "age": display.format_age(seen) if seen is not None else "never",
        "healthy": agent.status == "ONLINE" and seen is not None and seen < 3 * agent.heartbeat_interval,
        "window_days": RECENT_WINDOW.days, "shown": RECENT_RUNS,
    }
    return render(request, "dashboard/agent.html", context)
