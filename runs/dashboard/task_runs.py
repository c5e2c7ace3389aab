"""A task run's own page: its facts, its state history (who moved it, why) and its log lines."""

from django.http import Http404
from django.shortcuts import render
from django.utils import timezone

from runs.access import scoped
from runs.models import Log, StateChange, TaskRun

from . import display
from .views import dashboard_login_required

LOG_LINES = 500


@dashboard_login_required
def task_run_detail(request, pk):
    task_run = scoped(request, TaskRun.objects.select_related("flow_run__flow"), "flow_run__workspace_id") \
        .filter(pk=pk, flow_run__deleted_at__isnull=True).first()
    if task_run is None:
        raise Http404("No such task run.")
    history = list(StateChange.objects.filter(task_run=task_run).select_related("user", "agent")
                   .order_by("timestamp", "id")[:500])
    # The newest lines, shown oldest first; the run page's log section pages through all of them.
    logs = list(Log.objects.filter(task_run=task_run).order_by("-timestamp", "-id")[:LOG_LINES])[::-1]
    now = timezone.now()
    beat = (now - task_run.last_heartbeat).total_seconds() if task_run.last_heartbeat else None
    return render(request, "dashboard/task_run.html", {
        "nav": "runs", "task": task_run, "run": task_run.flow_run, "history": history, "logs": logs,
        "css": display.state_css(task_run.state), "beat_age": display.format_age(beat) if beat is not None else None,
        "log_limit": LOG_LINES, "more_logs": len(logs) == LOG_LINES,
    })
