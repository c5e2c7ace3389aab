"""Cancel, retry and mark failed from the dashboard: one run from its page, or many from the runs
list, always after a confirmation page that says how many runs it will touch.

Each act is one set-based transition (runs/states.py) over the runs the person may operate; runs
that cannot move (finished, already cancelling, in a workspace where the person only reads) are
left alone and counted in the answer.
"""

from dataclasses import dataclass

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from runs.access import scoped, workspace_ids_for
from runs.models import TERMINAL_STATES, Actor, FlowRun, Role, State
from runs.states import transition_flow_runs

from .views import dashboard_login_required

# The most runs one confirmation acts on: the confirmation lists them, the transition locks them.
BULK_LIMIT = 500
SHOWN_ON_CONFIRMATION = 20


@dataclass(frozen=True)
class RunAction:
    slug: str
    verb: str  # "Cancel"
    done: str  # "cancelled"
    applies_to: str  # which runs it moves, in words for the confirmation


ACTIONS = {a.slug: a for a in (
    RunAction("cancel", "Cancel", "cancelled",
              "runs not started are cancelled at once; running runs are asked to stop (CANCELLING)"),
    RunAction("retry", "Retry", "retried", "finished runs are scheduled again, due now"),
    RunAction("mark-failed", "Mark failed", "marked failed", "unfinished runs are marked FAILED"),
)}


def allowed_actions(run_state):
    """The actions that would move a run in `run_state` (for the run page's buttons)."""
    if run_state in TERMINAL_STATES:
        return [ACTIONS["retry"]]
    actions = [ACTIONS["mark-failed"]]
    if run_state != State.CANCELLING:
        actions.insert(0, ACTIONS["cancel"])
    return actions


def apply(action, runs, user):
    """Move `runs` (a queryset the caller has scoped to what `user` may operate); returns
    (moved, asked_to_stop): the rows moved to the action's end state, and those asked to stop."""
    message = f"{ACTIONS[action].done.capitalize()} by {user} from the dashboard."
    if action == "cancel":
        stopped = transition_flow_runs(runs.filter(state__in=[State.SCHEDULED, State.LATE, State.PAUSED]),
                                       State.CANCELLED, actor=Actor.USER, user=user, message=message)
        asked = transition_flow_runs(runs.filter(state__in=[State.SUBMITTED, State.RUNNING]), State.CANCELLING,
                                     actor=Actor.USER, user=user, message=message)
        return stopped, asked
    if action == "retry":
        return transition_flow_runs(runs, State.SCHEDULED, actor=Actor.USER, user=user, message=message, retry=True,
                                    updates={"scheduled_start": timezone.now()}), []
    return transition_flow_runs(runs.exclude(state__in=TERMINAL_STATES), State.FAILED, actor=Actor.USER, user=user,
                                message=message), []


def summary(action, asked_for, moved, asked_to_stop):
    words = ACTIONS[action]
    parts = [f"{words.done.capitalize()} {len(moved)} run{'s' if len(moved) != 1 else ''}"]
    if asked_to_stop:
        parts.append(f"asked {len(asked_to_stop)} running run{'s' if len(asked_to_stop) != 1 else ''} to stop")
    left = asked_for - len(moved) - len(asked_to_stop)
    if left:
        parts.append(f"left {left} alone (their state does not allow it, or someone changed them meanwhile)")
    return "; ".join(parts) + "."


def safe_next(request, fallback):
    target = request.POST.get("next") or fallback
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return fallback


@dashboard_login_required
@require_POST
def act(request):
    """Step 1 (no `confirmed`): a page that says what will happen to how many runs. Step 2: do it,
    and go back where the person came from with a message that counts what moved."""
    action = request.POST.get("action", "")
    if action not in ACTIONS:
        return render(request, "dashboard/run_action_error.html",
                      {"error": f"Unknown action {action!r}: use one of {', '.join(ACTIONS)}."}, status=400)
    ids = request.POST.getlist("run")
    fallback = "/dashboard/runs/"
    if not ids:
        messages.warning(request, "No run was selected: tick the runs to act on first.")
        return HttpResponseRedirect(safe_next(request, fallback))
    if len(ids) > BULK_LIMIT:
        return render(request, "dashboard/run_action_error.html", {
            "error": f"{len(ids)} runs were selected; one action takes at most {BULK_LIMIT}. Narrow the filters."},
            status=400)
    try:
        ids = list(dict.fromkeys(str(FlowRun._meta.pk.to_python(value)) for value in ids))
    except Exception:  # noqa: BLE001 - a malformed id from a hand-made form
        return render(request, "dashboard/run_action_error.html", {"error": "A run id is not a valid id."}, status=400)
    readable = scoped(request, FlowRun.objects.listed().filter(pk__in=ids))
    operable = scoped(request, FlowRun.objects.listed().filter(pk__in=ids), required=Role.OPERATOR)
    if not operable.exists():
        if readable.exists():
            raise PermissionDenied(f"{ACTIONS[action].verb} needs the operator role in the runs' workspace.")
        messages.warning(request, "None of the selected runs exists any more.")
        return HttpResponseRedirect(safe_next(request, fallback))
    if request.POST.get("confirmed") != "yes":
        runs = list(operable.select_related("flow").order_by("-scheduled_start", "-id")[:BULK_LIMIT])
        by_state = {}
        for run in runs:
            by_state[run.state] = by_state.get(run.state, 0) + 1
        return render(request, "dashboard/run_action_confirm.html", {
            "nav": "runs", "action": ACTIONS[action], "runs": runs[:SHOWN_ON_CONFIRMATION], "count": len(runs),
            "more": max(len(runs) - SHOWN_ON_CONFIRMATION, 0), "by_state": sorted(by_state.items()),
            "ids": [str(run.pk) for run in runs], "not_allowed": readable.count() - len(runs),
            "next": safe_next(request, fallback),
        })
    count = operable.count()
    moved, asked = apply(action, operable, request.user)
    messages.success(request, summary(action, count, moved, asked))
    allowed = workspace_ids_for(request, Role.OPERATOR)
    if allowed is not None and readable.exclude(workspace_id__in=allowed).exists():
        messages.warning(request, f"Some selected runs are in workspaces where your role is viewer; "
                                  f"{ACTIONS[action].verb.lower()} needs operator, so they were left alone.")
    return HttpResponseRedirect(safe_next(request, fallback))
