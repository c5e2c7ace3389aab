"""Flows: the list, one flow's page (its schedules and versions, newest first, in pages), the
comparison of two of its versions, and pinning a schedule to a version (operators).

Every page costs a fixed number of queries whatever the number of versions: versions come a page
at a time, and a schedule's version choices are the newest few plus the ones pinned.
"""

import json

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from runs import actions
from runs.access import may, scoped
from runs.audit import Who
from runs.models import Flow, FlowVersion, Role, Schedule
from runs.versions import compare_versions

from . import flow_stats
from .views import dashboard_login_required, int_param

FLOWS_LIMIT = 500
VERSIONS_PER_PAGE = 20
SCHEDULES_LIMIT = 200
# How many of the newest versions a schedule's pin menu offers (besides the ones pinned now); an
# older one is pinned through the API (schedules/{id}/pin) or the admin.
PIN_CHOICES = 20
MAX_PAGE = 100_000


def _count(model, **outer):
    """A correlated COUNT subquery (two annotated Counts over joins would multiply each other)."""
    rows = model.objects.filter(**{k: OuterRef(v) for k, v in outer.items()}).order_by()
    return Coalesce(Subquery(rows.values(*outer).annotate(n=Count("pk")).values("n")[:1]), 0)


@dashboard_login_required
def flow_list(request):
    latest = FlowVersion.objects.filter(flow_id=OuterRef("pk"), is_latest=True)
    flows = list(
        scoped(request, Flow.objects.all(), "workspace_id").order_by("name", "pk").annotate(
            version_count=_count(FlowVersion, flow_id="pk"), schedule_count=_count(Schedule, flow_id="pk"),
            latest_label=Subquery(latest.values("version")[:1]), latest_id=Subquery(latest.values("id")[:1]),
            latest_created=Subquery(latest.values("created")[:1]),
        )[:FLOWS_LIMIT + 1])
    return render(request, "dashboard/flows.html", {
        "nav": "flows", "flows": flows[:FLOWS_LIMIT], "more": len(flows) > FLOWS_LIMIT, "limit": FLOWS_LIMIT})


def get_flow(request, pk):
    flow = scoped(request, Flow.objects.all()).filter(pk=pk).first()
    if flow is None:
        raise Http404("No such flow.")
    return flow


def schedule_rows(request, flow, schedules, newest):
    """Each schedule of the flow with what it runs and, for operators, the versions it may pin."""
    can_operate = may(request, Role.OPERATOR, flow.workspace_id)
    offered = {v.pk: v for v in newest}
    rows = []
    for schedule in schedules:
        choices = dict(offered)
        if schedule.flow_version_id and schedule.flow_version_id not in choices:
            choices[schedule.flow_version_id] = schedule.flow_version
        rows.append({"schedule": schedule, "can_operate": can_operate,
                     "choices": sorted(choices.values(), key=lambda v: (v.created, v.pk), reverse=True)})
    return rows


def flow_page(request, flow, page=1, pin_error=""):
    """The flow page: its schedules (what each runs, a pin menu for operators) and one page of its
    versions, newest first, each with a link comparing it to the one before."""
    ordered = flow.versions.order_by("-created", "-id")
    start = (page - 1) * VERSIONS_PER_PAGE
    # One more than a page: it says whether there is a next page, and is the last row's predecessor.
    window = list(ordered[start:start + VERSIONS_PER_PAGE + 1])
    newest = window[:PIN_CHOICES] if page == 1 else list(ordered[:PIN_CHOICES])
    schedules = list(flow.schedules.select_related("flow_version", "work_queue").order_by("slug")[:SCHEDULES_LIMIT])
    now = timezone.now()
    context = {
        "nav": "flows", "flow": flow, "page": page, "pin_error": pin_error,
        "days": flow_stats.runs_per_day(flow, now), "record": flow_stats.record(flow, now),
        "record_sample": flow_stats.DURATION_SAMPLE,
        "versions": [{"version": v, "previous": window[i + 1] if i + 1 < len(window) else None}
                     for i, v in enumerate(window[:VERSIONS_PER_PAGE])],
        "has_next": len(window) > VERSIONS_PER_PAGE, "has_previous": page > 1,
        "version_total": flow.versions.count(),
        "latest": next((v for v in newest if v.is_latest), None),
        "schedules": schedule_rows(request, flow, schedules, newest),
        "schedules_more": len(schedules) >= SCHEDULES_LIMIT,
    }
    return render(request, "dashboard/flow.html", context, status=400 if pin_error else 200)


@dashboard_login_required
def flow_detail(request, pk):
    # Bounded: an OFFSET past a bigint is the database's error, not an empty page.
    page = min(max(int_param(request, "page", 1) or 1, 1), MAX_PAGE)
    return flow_page(request, get_flow(request, pk), page)


def _compared_version(flow, request, name):
    """(the version the query parameter names, or None; the problem to show)."""
    raw = request.GET.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        return None, f"{name}: choose a version of {flow.name} to compare."
    version = None
    if 0 < value < 2**63:
        version = FlowVersion.objects.select_related("flow").filter(
            pk=value, flow__workspace_id=flow.workspace_id).first()
    if version is None:
        return None, f"{name}: no version {value} in this workspace."
    if version.flow_id != flow.pk:
        return None, (f"{name}: version {value} is a version of flow {version.flow.name}, not of {flow.name}; "
                      f"compare two versions of one flow.")
    return version, ""


def shown_as_json(diff):
    """Parameter defaults written as JSON (true, null, {"a": 1}), as the API and the SDK take them."""
    for entry in diff["parameters"]["added"] + diff["parameters"]["removed"]:
        entry["shown"] = json.dumps(entry["value"], sort_keys=True)
    for entry in diff["parameters"]["changed"]:
        entry["old_shown"] = json.dumps(entry["old_value"], sort_keys=True)
        entry["new_shown"] = json.dumps(entry["new_value"], sort_keys=True)
    return diff


@dashboard_login_required
def compare(request, pk):
    """Two versions of one flow side by side: what changed, key by key, in words as well as colour."""
    flow = get_flow(request, pk)
    base, base_problem = _compared_version(flow, request, "base")
    head, head_problem = _compared_version(flow, request, "head")
    problems = [p for p in (base_problem, head_problem) if p]
    context = {"nav": "flows", "flow": flow, "problems": problems, "base": base, "head": head}
    if problems:
        return render(request, "dashboard/version_compare.html", context, status=400)
    context["diff"] = shown_as_json(compare_versions(base, head))
    return render(request, "dashboard/version_compare.html", context)


@dashboard_login_required
@require_POST
def pin(request, pk):
    """Pin a schedule to a version of its flow, or (empty choice) let it follow the latest."""
    schedule = scoped(request, Schedule.objects.select_related("flow", "flow_version"),
                      "flow__workspace_id").filter(pk=pk).first()
    if schedule is None:
        raise Http404("No such schedule.")
    if not may(request, Role.OPERATOR, schedule.flow.workspace_id):
        raise PermissionDenied("Pinning a schedule to a version needs the operator role in this workspace.")
    raw = request.POST.get("flow_version", "")
    version, problem = None, ""
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if 0 < value < 2**63:
            version = FlowVersion.objects.select_related("flow").filter(
                pk=value, flow__workspace_id=schedule.flow.workspace_id).first()
        if version is None:
            problem = f"flow_version: no version {raw[:40]} in this workspace."
    if not problem:
        try:
            actions.pin_schedule(schedule, version, who=Who.of(request, "dashboard"))
        except DjangoValidationError as exc:
            problem = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            schedule.refresh_from_db()
    if request.htmx:
        newest = list(schedule.flow.versions.order_by("-created", "-id")[:PIN_CHOICES])
        row = schedule_rows(request, schedule.flow, [schedule], newest)[0]
        # 200 with the error in the row: htmx swaps only successful answers.
        return render(request, "dashboard/_flow_schedule_row.html", {"row": row, "error": problem, "focus": True})
    if problem:  # the flow page again, saying why nothing changed
        return flow_page(request, schedule.flow, pin_error=problem)
    return redirect("dashboard:flow", pk=schedule.flow_id)
