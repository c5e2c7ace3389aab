"""The schedules page and its actions: pause (after a confirm step), resume, run now.

Each action is a POST with the CSRF token. Under htmx it answers the schedule's row alone, so
the toggle flips in place; without JavaScript the same forms post and redirect back.
"""

import time

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from runs import actions, scheduling
from runs.access import may, scoped
from runs.audit import Who
from runs.models import Flow, Role, Schedule
from runs.schedules import WATCHED_KINDS, ScheduleComputeError
from runs.schedules import next_fire_times as schedule_fire_times
from runs.schedules.bounds import budget_seconds

from .views import dashboard_login_required

NEXT_FIRE_TIMES = 3
# All rows of one page share this many times the per-computation budget: rows saved before their
# rule was validated may each cost a budget, and the page must still answer promptly.
PAGE_BUDGETS = 2


def next_times(schedule, now, seconds=None):
    """(its next fire times, why there are none): a bad stored rule marks its row, never fails the page."""
    if not schedule.is_active:
        return [], ""
    if seconds is not None and seconds <= 0 and schedule.kind in WATCHED_KINDS:
        return [], "Not computed: this page's time for computing fire times ran out."
    try:
        return schedule_fire_times(schedule, now, NEXT_FIRE_TIMES, seconds=seconds), ""
    except ScheduleComputeError as exc:
        return [], "; ".join(" ".join(problems) for problems in exc.message_dict.values())


def schedule_row(request, schedule, now, confirming=False, seconds=None, error=""):
    """What one row shows: kind, description, next fire times, status and what the user may do."""
    times, why = next_times(schedule, now, seconds)
    return {
        "schedule": schedule,
        "description": schedule.describe() or schedule.description,
        "next_times": times,
        "next_times_error": why,
        "error": error,
        "can_operate": may(request, Role.OPERATOR, schedule.flow.workspace_id),
        "can_edit": may(request, Role.ADMIN, schedule.flow.workspace_id),
        "confirming": confirming,
        "to_delete": scheduling.future_runs_to_delete(schedule, now).count() if confirming else None,
        "stays": scheduling.runs_that_stay(schedule, now) if confirming else None,
    }


def schedules_in_reach(request):
    return scoped(request, Schedule.objects.select_related("flow", "work_queue"), "flow__workspace_id")


def get_schedule(request, pk, *, operate):
    schedule = schedules_in_reach(request).filter(pk=pk).first()
    if schedule is None:
        raise Http404("No such schedule.")
    if operate and not may(request, Role.OPERATOR, schedule.flow.workspace_id):
        raise PermissionDenied("Pausing, resuming and running need the operator role in this workspace.")
    return schedule


def answer_row(request, schedule, now, confirming=False, error=""):
    """The row alone for htmx; otherwise back to the list (the confirm step is a page of its own).

    With an `error` (an action that could not be done) the row says so, and without htmx the
    list is shown with it instead of a redirect.
    """
    if request.htmx:
        # Focus follows the swap (static/dashboard/dashboard.js), so a keyboard user stays on the row.
        return render(request, "dashboard/_schedule_row.html",
                      {"row": schedule_row(request, schedule, now, confirming, error=error), "focus": True})
    if confirming:
        return render(request, "dashboard/schedule_pause.html",
                      {"nav": "schedules", "row": schedule_row(request, schedule, now, confirming)})
    if error:
        return schedule_list(request, errors={schedule.pk: error}, status=400)
    return redirect("dashboard:schedules")


@dashboard_login_required
def schedule_list(request, errors=None, status=200):
    now = timezone.now()
    deadline = time.monotonic() + PAGE_BUDGETS * budget_seconds()
    rows = []
    for s in schedules_in_reach(request).order_by("flow__name", "slug")[:500]:
        # Each row gets the per-computation budget, or what is left of the page's if less.
        seconds = min(budget_seconds(), deadline - time.monotonic())
        rows.append(schedule_row(request, s, now, seconds=seconds, error=(errors or {}).get(s.pk, "")))
    can_create = scoped(request, Flow.objects.all(), required=Role.ADMIN).exists()
    return render(request, "dashboard/schedules.html",
                  {"nav": "schedules", "now": now, "rows": rows, "can_create": can_create}, status=status)


@dashboard_login_required
@require_http_methods(["GET", "POST"])
def pause(request, pk):
    """GET: the confirm step, saying how many future runs the pause deletes. POST: pause."""
    schedule = get_schedule(request, pk, operate=True)
    now = timezone.now()
    if request.method == "GET":
        return answer_row(request, schedule, now, confirming=True)
    actions.pause_schedule(schedule, who=Who.of(request, "dashboard"), now=now)
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
    try:
        actions.resume_schedule(schedule, who=Who.of(request, "dashboard"), now=now)
    except ScheduleComputeError as exc:  # a rule saved before it was validated: it stays paused, saying why
        why = "; ".join(" ".join(problems) for problems in exc.message_dict.values())
        return answer_row(request, schedule, now, error=f"Not resumed: {why}")
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
