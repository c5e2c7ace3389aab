"""The schedules page and its actions: pause (after a confirm step), resume, run now.

Each action is a POST with the CSRF token. Under htmx it answers the schedule's row alone, so
the toggle flips in place; without JavaScript the same forms post and redirect back.
"""

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from runs import scheduling
from runs.models import Schedule

from .access import can_operate, scoped
from .views import dashboard_login_required

NEXT_FIRE_TIMES = 3


def schedule_row(request, schedule, now, confirming=False):
    """What one row shows: kind, description, next fire times, status and what the user may do."""
    return {
        "schedule": schedule,
        "description": schedule.describe() or schedule.description,
        "next_times": schedule.next_fire_times(now, NEXT_FIRE_TIMES) if schedule.is_active else [],
        "can_operate": can_operate(request, schedule.flow.workspace_id),
        "confirming": confirming,
        "to_delete": scheduling.future_runs_to_delete(schedule, now).count() if confirming else None,
    }


def schedules_in_reach(request):
    return scoped(request, Schedule.objects.select_related("flow", "work_queue"), "flow__workspace_id")


def get_schedule(request, pk, *, operate):
    schedule = schedules_in_reach(request).filter(pk=pk).first()
    if schedule is None:
        raise Http404("No such schedule.")
    if operate and not can_operate(request, schedule.flow.workspace_id):
        raise PermissionDenied("Pausing, resuming and running need the operator role in this workspace.")
    return schedule


def answer_row(request, schedule, now, confirming=False):
    """The row alone for htmx; otherwise back to the list (the confirm step is a page of its own)."""
    if request.htmx:
        # Focus follows the swap (static/dashboard/dashboard.js), so a keyboard user stays on the row.
        return render(request, "dashboard/_schedule_row.html",
                      {"row": schedule_row(request, schedule, now, confirming), "focus": True})
    if confirming:
        return render(request, "dashboard/schedule_pause.html",
                      {"nav": "schedules", "row": schedule_row(request, schedule, now, confirming)})
    return redirect("dashboard:schedules")


@dashboard_login_required
def schedule_list(request):
    now = timezone.now()
    rows = [schedule_row(request, s, now) for s in schedules_in_reach(request).order_by("flow__name", "slug")[:500]]
    return render(request, "dashboard/schedules.html", {"nav": "schedules", "now": now, "rows": rows})


@dashboard_login_required
@require_http_methods(["GET", "POST"])
def pause(request, pk):
    """GET: the confirm step, saying how many future runs the pause deletes. POST: pause."""
    schedule = get_schedule(request, pk, operate=True)
    now = timezone.now()
    if request.method == "GET":
        return answer_row(request, schedule, now, confirming=True)
    scheduling.pause_schedule(schedule, now)
    return answer_row(request, schedule, now)


@dashboard_login_required
@require_http_methods(["GET", "POST"])
def cancel_pause(request, pk):
    """Leave the confirm step without pausing: the row as it was."""
    schedule = get_schedule(request, pk, operate=False)
    return answer_row(request, schedule, timezone.now())


@dashboard_login_required
@require_POST
def resume(request, pk):
    schedule = get_schedule(request, pk, operate=True)
    now = timezone.now()
    scheduling.resume_schedule(schedule, now)
    return answer_row(request, schedule, now)


@dashboard_login_required
@require_POST
def run_now(request, pk):
    """A manual run of the schedule's flow with its parameters; opens the new run."""
    schedule = get_schedule(request, pk, operate=True)
    run, _ = scheduling.create_manual_run(schedule.flow, user=request.user, schedule=schedule)
    response = redirect("dashboard:run", pk=run.pk)
    if request.htmx:
        response["HX-Redirect"] = response["Location"]
    return response
