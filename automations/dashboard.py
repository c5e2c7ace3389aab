"""The automations pages of the dashboard: the list (trigger in words, on/off switch for operators,
last firings) and one automation's page (admins edit it; everyone who may see it reads its
firings). The switch is a POST form: under htmx it answers its row alone, without JavaScript it
posts and comes back to the list."""

import json

from django import forms
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Prefetch
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from automations import changes, messages
from automations.models import Automation, Firing
from automations.triggers import describe
from runs.access import may, scoped
from runs.audit import Who
from runs.dashboard.views import dashboard_login_required
from runs.models import Role

LIST_ROWS = 500
RECENT_FIRINGS = 5
PAGE_FIRINGS = 50


def automations_in_reach(request):
    return scoped(request, Automation.objects.select_related("workspace"))


def get_automation(request, pk):
    automation = automations_in_reach(request).filter(pk=pk).first()
    if automation is None:
        raise Http404("No such automation.")
    return automation


def automation_row(request, automation, error=""):
    return {"automation": automation, "summary": describe(automation.trigger or {}), "error": error,
            "can_operate": may(request, Role.OPERATOR, automation.workspace_id),
            "can_edit": may(request, Role.ADMIN, automation.workspace_id),
            "recent": getattr(automation, "recent", None)}


def with_recent_firings(queryset):
    # One query for the last firings of every row (a window per automation), not one per row.
    return queryset.prefetch_related(Prefetch(
        "firings", queryset=Firing.objects.order_by("-fired", "-pk")[:RECENT_FIRINGS], to_attr="recent"))


@dashboard_login_required
def automation_list(request, errors=None, status=200):
    rows = [automation_row(request, a, (errors or {}).get(a.pk, "")) for a in
            with_recent_firings(automations_in_reach(request).order_by("workspace__name", "name"))[:LIST_ROWS]]
    return render(request, "dashboard/automations.html", {"nav": "automations", "rows": rows}, status=status)


@dashboard_login_required
@require_POST
def toggle(request, pk):
    """Turn an automation on (enabled=1) or off (operators); a refusal is shown on its row."""
    automation = get_automation(request, pk)
    if not may(request, Role.OPERATOR, automation.workspace_id):
        raise PermissionDenied("Turning automations on and off needs the operator role in this workspace.")
    error = ""
    try:
        changes.set_enabled(automation, request.POST.get("enabled") == "1", who=Who.of(request, "dashboard"))
    except ValidationError as exc:
        error = "Not enabled: " + "; ".join(f"{field}: {' '.join(problems)}"
                                            for field, problems in exc.message_dict.items())
    if request.htmx:
        automation = with_recent_firings(automations_in_reach(request)).get(pk=pk)
        return render(request, "dashboard/_automation_row.html",
                      {"row": automation_row(request, automation, error), "focus": True})
    if error:
        return automation_list(request, errors={automation.pk: error}, status=400)
    return redirect("dashboard:automations")


class JSONText(forms.CharField):
    widget = forms.Textarea(attrs={"rows": 12, "cols": 80, "spellcheck": "false"})

    def to_python(self, value):
        value = super().to_python(value)
        try:
            return json.loads(value) if value else None
        except ValueError as exc:
            raise ValidationError(f"Not valid JSON: {exc}") from None

    def prepare_value(self, value):
        return value if isinstance(value, str) else json.dumps(value, indent=2)


class AutomationForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 80}))
    enabled = forms.BooleanField(required=False)
    trigger = JSONText(help_text="What to watch for (README, Automations).")
    actions = JSONText(required=False, help_text="What to do when it fires: a list of actions.")

    def __init__(self, *args, automation, **kwargs):
        super().__init__(*args, **kwargs)
        self.automation = automation

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        if data.get("actions") is None:
            data["actions"] = []
        try:
            cleaned = changes.clean(data, self.automation.workspace, self.automation)
        except ValidationError as exc:
            for field, problems in exc.message_dict.items():
                target = next((name for name in ("trigger", "actions", "name") if field.startswith(name)), None)
                self.add_error(target, [f"{field}: {p}" if field != target else p for p in problems])
            return data
        return cleaned


@dashboard_login_required
@require_http_methods(["GET", "POST"])
def automation_detail(request, pk):
    """One automation: its form (admins) or its settings (others), and its last firings."""
    automation = get_automation(request, pk)
    can_edit = may(request, Role.ADMIN, automation.workspace_id)
    saved = False
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied("Editing automations needs the admin role in this workspace.")
        form = AutomationForm(request.POST, automation=automation)
        if form.is_valid():
            changes.change_automation(automation, form.cleaned_data, who=Who.of(request, "dashboard"))
            saved = True
            form = AutomationForm(initial=initial(automation), automation=automation)
    else:
        form = AutomationForm(initial=initial(automation, can_edit), automation=automation)
    for name in form.errors:
        if name in form.fields:  # a screen reader hears the problem with the field
            form.fields[name].widget.attrs.update({"aria-invalid": "true", "aria-describedby": f"id_{name}-errors"})
    if not can_edit:
        for field in form.fields.values():
            field.disabled = True
    return render(request, "dashboard/automation.html", {
        "nav": "automations", "automation": automation, "form": form, "can_edit": can_edit, "saved": saved,
        "summary": describe(automation.trigger or {}),
        "firings": list(automation.firings.order_by("-fired", "-pk")[:PAGE_FIRINGS])},
        status=400 if form.errors else 200)


def initial(automation, can_edit=True):
    """The form's values; without the right to edit, destinations without their credentials."""
    return {"name": automation.name, "description": automation.description, "enabled": automation.enabled,
            "trigger": automation.trigger,
            "actions": automation.actions if can_edit else messages.shown_actions(automation.actions)}
