"""Create and edit schedules in the dashboard, with a live preview of the next fire times.

The form's controls (a calendar rule as selects, checkboxes and text boxes; the DST policies as
selects) are turned into the same definition the API takes, and checked and saved by the API's
own serializer through the actions layer: one set of rules, one audit trail, errors naming the
field. The preview (htmx, as the person types) asks the same validation and shows the next 10 fire
times in UTC and in the schedule's zone, or what is wrong.
"""

import json
from types import SimpleNamespace

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from runs import actions
from runs.access import may, scoped
from runs.api.serializers import SchedulePreviewRequestSerializer, ScheduleSerializer
from runs.audit import Who, snapshot
from runs.models import Flow, Role, Schedule, WorkQueue
from runs.models.schedules import AmbiguousTimePolicy, NonexistentTimePolicy, ScheduleKind
from runs.schedules.calendar import ADJUSTMENTS, BASE_RULES, WEEKDAY_NAMES, WEEKDAYS

from .views import dashboard_login_required

PREVIEW_COUNT = 10
MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
BASE_RULE_LABELS = {
    **{rule: label for rule, label in BASE_RULES.items() if label},
    "day_of_month": "A day of the month (1..31, -1 the last)",
    "nth_weekday": "The nth weekday of the month (e.g. the last Friday)",
}
ADJUSTMENT_LABELS = {"none": "none", "next_business_day": "move to the next business day",
                     "previous_business_day": "move to the previous business day"}


def _split(text):
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def calendar_from_post(post):
    """The calendar rule the controls describe (the API's JSON form). Numbers that are not numbers
    are passed on as text, so the rule's own validation names them."""
    def number(name):
        raw = post.get(name, "").strip()
        try:
            return int(raw)
        except ValueError:
            return raw or None

    base = {"rule": post.get("cal_base", "every_day")}
    if base["rule"] == "day_of_month":
        base["day"] = number("cal_day")
    if base["rule"] == "nth_weekday":
        base["nth"], base["weekday"] = number("cal_nth"), post.get("cal_weekday", "MO")
    rule = {"base": base}
    if post.get("cal_country", "").strip():
        rule["holidays"] = {"country": post["cal_country"].strip().upper()}
        if post.get("cal_subdivision", "").strip():
            rule["holidays"]["subdivision"] = post["cal_subdivision"].strip().upper()
    filters = []
    months = [int(m) for m in post.getlist("cal_months") if m.isdigit()]
    if months:
        filters.append({"type": "months", "months": months})
    weekdays = [d for d in post.getlist("cal_weekdays") if d in WEEKDAYS]
    if weekdays:
        filters.append({"type": "weekdays", "weekdays": weekdays})
    if post.get("cal_business_days"):
        filters.append({"type": "business_days"})
    if post.get("cal_not_holidays"):
        filters.append({"type": "not_holidays"})
    dates = _split(post.get("cal_exclude_dates", ""))
    if dates:
        filters.append({"type": "exclude_dates", "dates": dates})
    if filters:
        rule["filters"] = filters
    adjustment = post.get("cal_adjustment", "none")
    if adjustment != "none":
        rule["adjustment"] = adjustment
    if post.get("cal_window_start", "").strip():
        rule["window"] = {"start": post["cal_window_start"].strip(), "end": post.get("cal_window_end", "").strip(),
                          "every_minutes": number("cal_window_every")}
    else:
        rule["times"] = _split(post.get("cal_times", "")) or ["00:00"]
    return rule


def definition_from_post(post):
    """What the API would receive for the schedule's timing."""
    kind = post.get("kind", ScheduleKind.INTERVAL)
    data = {"kind": kind, "timezone": post.get("timezone", "").strip() or "UTC",
            "dst_nonexistent": post.get("dst_nonexistent", NonexistentTimePolicy.SHIFT),
            "dst_ambiguous": post.get("dst_ambiguous", AmbiguousTimePolicy.ONCE)}
    if kind == ScheduleKind.INTERVAL:
        data["interval_seconds"] = post.get("interval_seconds", "").strip() or None
        if post.get("anchor", "").strip():
            data["anchor"] = post["anchor"].strip()
    elif kind == ScheduleKind.CRON:
        data["cron"] = post.get("cron", "").strip()
    elif kind == ScheduleKind.RRULE:
        data["rrule"] = post.get("rrule", "").strip()
    elif kind == ScheduleKind.CALENDAR:
        data["calendar"] = calendar_from_post(post)
    return data


def form_values(schedule):
    """The controls' values for an existing schedule (the calendar rule taken apart)."""
    values = {
        "flow": schedule.flow_id, "slug": schedule.slug, "description": schedule.description, "kind": schedule.kind,
        "interval_seconds": schedule.interval_seconds or "", "cron": schedule.cron, "rrule": schedule.rrule,
        "anchor": schedule.anchor.strftime("%Y-%m-%dT%H:%M:%S") if schedule.anchor else "",
        "timezone": str(schedule.timezone), "dst_nonexistent": schedule.dst_nonexistent,
        "dst_ambiguous": schedule.dst_ambiguous, "parameters": json.dumps(schedule.parameters or {}, indent=2),
        "work_queue": schedule.work_queue_id or "", "catchup_max_runs": schedule.catchup_max_runs,
        "only_newest_when_late": schedule.only_newest_when_late,
        "flow_version": schedule.flow_version_id or "",
    }
    rule = schedule.calendar or {}
    base = rule.get("base") or {}
    values.update({"cal_base": base.get("rule", "every_day"), "cal_day": base.get("day", ""),
                   "cal_nth": base.get("nth", ""), "cal_weekday": base.get("weekday", "MO"),
                   "cal_country": (rule.get("holidays") or {}).get("country", ""),
                   "cal_subdivision": (rule.get("holidays") or {}).get("subdivision", ""),
                   "cal_adjustment": rule.get("adjustment", "none"), "cal_months": [], "cal_weekdays": [],
                   "cal_times": ", ".join(rule.get("times") or []), "cal_exclude_dates": ""})
    for f in rule.get("filters") or []:
        if f["type"] == "months":
            values["cal_months"] = f["months"]
        elif f["type"] == "weekdays":
            values["cal_weekdays"] = f["weekdays"]
        elif f["type"] in ("business_days", "not_holidays"):
            values[f"cal_{f['type']}"] = True
        elif f["type"] == "exclude_dates":
            values["cal_exclude_dates"] = ", ".join(f["dates"])
    window = rule.get("window") or {}
    values.update({"cal_window_start": window.get("start", ""), "cal_window_end": window.get("end", ""),
                   "cal_window_every": window.get("every_minutes", "")})
    return values


def post_values(post):
    values = {key: post.get(key, "") for key in post}
    values["cal_months"] = [int(m) for m in post.getlist("cal_months") if m.isdigit()]
    values["cal_weekdays"] = post.getlist("cal_weekdays")
    for name in ("flow", "work_queue", "flow_version"):
        values[name] = int(values[name]) if str(values.get(name, "")).isdigit() else ""
    values["only_newest_when_late"] = bool(post.get("only_newest_when_late"))
    return values


def flows_to_edit(request):
    return scoped(request, Flow.objects.select_related("workspace").order_by("name"), required=Role.ADMIN)


def choices(request):
    return {
        "flows": flows_to_edit(request)[:500],
        "queues": scoped(request, WorkQueue.objects.order_by("name"), required=Role.ADMIN)[:500],
        "kinds": ScheduleKind.choices, "dst_gap": NonexistentTimePolicy.choices,
        "dst_overlap": AmbiguousTimePolicy.choices, "base_rules": list(BASE_RULE_LABELS.items()),
        "weekdays": list(zip(WEEKDAYS, WEEKDAY_NAMES)), "months": list(enumerate(MONTH_NAMES, start=1)),
        "adjustments": [(a, ADJUSTMENT_LABELS[a]) for a in sorted(ADJUSTMENTS, key=list(ADJUSTMENT_LABELS).index)],
        "nths": [(n, label) for n, label in ((1, "first"), (2, "second"), (3, "third"), (4, "fourth"), (5, "fifth"),
                                            (-1, "last"), (-2, "second to last"))],
    }


def flat_errors(detail, prefix=""):
    """DRF's nested error detail as [(field, message)], e.g. ("calendar", "base.rule: ...")."""
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            out += flat_errors(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(detail, list):
        out = []
        for item in detail:
            out += flat_errors(item, prefix)
        return out
    return [(prefix or "schedule", str(detail))]


def save(request, instance, values):
    """Check and save through the API's serializer and the actions layer; returns (schedule, errors)."""
    post = request.POST
    flow = flows_to_edit(request).filter(pk=values.get("flow") or 0).first()
    if flow is None:
        return None, [("flow", "Choose a flow of a workspace where you are an admin.")]
    data = {**definition_from_post(post), "flow": flow.name, "slug": post.get("slug", "").strip(),
            "description": post.get("description", "").strip(),
            "only_newest_when_late": bool(post.get("only_newest_when_late")),
            "catchup_max_runs": post.get("catchup_max_runs", "").strip() or 0}
    try:
        parameters = json.loads(post.get("parameters", "").strip() or "{}")
    except ValueError as exc:
        return None, [("parameters", f"Not JSON: {exc}.")]
    data["parameters"] = parameters
    queue = None
    if values.get("work_queue"):
        queue = WorkQueue.objects.filter(pk=values["work_queue"], workspace_id=flow.workspace_id).first()
        if queue is None:
            return None, [("work_queue", "Choose a queue of the flow's workspace, or none.")]
    data["work_queue"] = queue.name if queue else None
    if "flow_version" in post:  # the edit form offers it: empty follows the latest
        raw = post.get("flow_version", "").strip()
        data["flow_version"] = int(raw) if raw.isdigit() and len(raw) < 19 else (raw or None)
    context = {"request": SimpleNamespace(workspace=flow.workspace, user=request.user)}
    serializer = ScheduleSerializer(instance, data=data, context=context)
    if not serializer.is_valid():
        return None, flat_errors(serializer.errors)
    before = snapshot(instance) if instance else None
    schedule = actions.save_schedule(serializer.save, who=Who.of(request, "dashboard"), before=before)
    return schedule, []


VERSION_CHOICES = 20


def version_choices(schedule):
    """The newest versions of the schedule's flow, and its pinned one when older."""
    if schedule is None:
        return []
    versions = list(schedule.flow.versions.order_by("-created", "-id")[:VERSION_CHOICES])
    if schedule.flow_version_id and all(v.pk != schedule.flow_version_id for v in versions):
        versions.append(schedule.flow_version)
    return versions


def render_form(request, values, *, instance=None, errors=(), status=200):
    return render(request, "dashboard/schedule_form.html", {
        "nav": "schedules", "v": values, "schedule": instance, "errors": errors, **choices(request),
        "versions": version_choices(instance),
    }, status=status)


DEFAULTS = {"kind": ScheduleKind.CRON, "cron": "0 9 * * 1-5", "timezone": "UTC",
            "dst_nonexistent": NonexistentTimePolicy.SHIFT, "dst_ambiguous": AmbiguousTimePolicy.ONCE,
            "parameters": "{}", "catchup_max_runs": 0, "cal_base": "business_days", "cal_times": "09:00", "cal_adjustment": "none",
            "cal_months": [], "cal_weekdays": [], "cal_weekday": "MO"}


@dashboard_login_required
@require_http_methods(["GET", "POST"])
def schedule_new(request):
    if not flows_to_edit(request).exists():
        raise PermissionDenied("Creating a schedule needs the admin role in a workspace that has a flow "
                               "(register the flow first).")
    if request.method == "GET":
        return render_form(request, {**DEFAULTS, "flow": int(request.GET["flow"])
                                     if request.GET.get("flow", "").isdigit() else ""})
    values = post_values(request.POST)
    schedule, errors = save(request, None, values)
    if errors:
        return render_form(request, values, errors=errors, status=400)
    return HttpResponseRedirect(f"/dashboard/schedules/#schedule-{schedule.pk}")


@dashboard_login_required
@require_http_methods(["GET", "POST"])
def schedule_edit(request, pk):
    schedule = scoped(request, Schedule.objects.select_related("flow"), "flow__workspace_id").filter(pk=pk).first()
    if schedule is None:
        raise Http404("No such schedule.")
    if not may(request, Role.ADMIN, schedule.flow.workspace_id):
        raise PermissionDenied("Editing a schedule needs the admin role in its workspace.")
    if request.method == "GET":
        return render_form(request, form_values(schedule), instance=schedule)
    values = post_values(request.POST)
    saved, errors = save(request, schedule, values)
    if errors:
        return render_form(request, values, instance=schedule, errors=errors, status=400)
    return HttpResponseRedirect(f"/dashboard/schedules/#schedule-{saved.pk}")


@dashboard_login_required
@require_POST
def schedule_preview(request):
    """The next fire times of the form's definition (htmx partial), or what is wrong with it."""
    incoming = SchedulePreviewRequestSerializer(data={**definition_from_post(request.POST), "count": PREVIEW_COUNT},
                                                context={"request": SimpleNamespace(workspace=None)})
    context = {"errors": [], "times": [], "description": ""}
    if not incoming.is_valid():
        context["errors"] = flat_errors(incoming.errors)
    else:
        fields = dict(incoming.validated_data)
        fields.pop("count")
        draft = Schedule(**fields)
        now = timezone.now()
        zone = draft.timezone
        context["times"] = [(when, when.astimezone(zone)) for when in draft.next_fire_times(now, PREVIEW_COUNT)]
        context["description"] = draft.describe()
        context["zone"] = str(zone)
    return render(request, "dashboard/_schedule_preview.html", context)
