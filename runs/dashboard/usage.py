"""The usage page: per workspace, the task runs that COMPLETED this month (UTC) against its monthly
quota, the months before, and (for its admins) the quota to change (runs/quota.py)."""

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from runs import actions, quota
from runs.access import may, scoped
from runs.audit import Who
from runs.models import Role, Workspace

from .views import dashboard_login_required

HISTORY_MONTHS = 6
MAX_QUOTA = 2_000_000_000


def workspace_usage(workspace, counts, months, can_change):
    """One workspace's row of the page, from the counts of `quota.monthly_counts`."""
    limit = workspace.monthly_task_run_quota
    used = counts.get((workspace.pk, months[0]), 0)
    percent = None if limit is None else min(round(100 * used / limit), 100)
    return {"workspace": workspace, "used": used, "limit": limit, "percent": percent,
            "remaining": None if limit is None else max(limit - used, 0),
            "reached": limit is not None and used >= limit, "can_change": can_change,
            "used_text": f"{used:,}", "limit_text": "" if limit is None else f"{limit:,}",
            "remaining_text": "" if limit is None else f"{max(limit - used, 0):,}",
            "history": [(month, f"{counts.get((workspace.pk, month), 0):,}") for month in months[1:]]}


@dashboard_login_required
def usage(request):
    """Every workspace the person may read, in two queries whatever their number."""
    now = timezone.now()
    months = quota.months_back(now, HISTORY_MONTHS)
    workspaces = list(scoped(request, Workspace.objects.select_related("account"), path="id")
                      .order_by("account__slug", "slug"))
    counts = quota.monthly_counts([w.pk for w in workspaces], months[-1], months[0])
    rows = [workspace_usage(w, counts, months, may(request, Role.ADMIN, w.pk)) for w in workspaces]
    return render(request, "dashboard/usage.html", {
        "nav": "usage", "now": now, "rows": rows, "month": months[0], "resets_at": quota.resets_at(now),
        "error": request.session.pop("usage_error", None), "error_for": request.session.pop("usage_error_for", None)})


def parse_quota(raw):
    """The quota a form field asks for: None when empty (no quota); raises ValueError when not 1 or more."""
    raw = (raw or "").strip().replace(",", "").replace("_", "")
    if not raw:
        return None
    value = int(raw)
    if not 1 <= value <= MAX_QUOTA:
        raise ValueError
    return value


@require_POST
@dashboard_login_required
def change_quota(request, pk):
    """Set a workspace's monthly quota (its admins), audited through the actions layer."""
    workspace = Workspace.objects.filter(pk=pk).select_related("account").first()
    if workspace is None or not may(request, Role.VIEWER, pk):
        raise Http404("No such workspace.")
    if not may(request, Role.ADMIN, pk):
        raise PermissionDenied("Only the workspace's admins change its quota.")
    try:
        value = parse_quota(request.POST.get("monthly_task_run_quota"))
    except ValueError:
        request.session["usage_error"] = (f"The quota must be a whole number from 1 to {MAX_QUOTA:,}, or empty for "
                                          "no quota.")
        request.session["usage_error_for"] = workspace.pk
        return redirect("dashboard:usage")
    actions.change_settings(workspace, {"monthly_task_run_quota": value}, who=Who.of(request, "dashboard"))
    return redirect("dashboard:usage")
