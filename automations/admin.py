"""Automations in the admin: edited by workspace admins (trigger and actions validated as in the
API, saves audited by WorkspaceScopedAdmin); firings and buckets are read-only records; the
delivery log is in delivery_admin.py."""

from django.contrib import admin
from django.core.exceptions import ValidationError

from automations import delivery_admin  # noqa: F401  (registers DeliveryAdmin)
from automations.actions import validate_actions
from automations.changes import destination_problems
from automations.models import Automation, Firing, TriggerBucket
from automations.triggers import describe, validate_trigger
from runs.admin import WorkspaceScopedAdmin, WorkspaceScopedForm


class AutomationForm(WorkspaceScopedForm):
    def clean(self):
        data = super().clean()
        for field, check in (("trigger", lambda value: validate_trigger(value)),
                             ("actions", lambda value: validate_actions(value, data.get("workspace")))):
            if field not in data or (field == "actions" and data.get("workspace") is None):
                continue  # a workspace refused already: its actions cannot be judged
            try:
                data[field] = check(data[field])
            except ValidationError as exc:
                messages = exc.message_dict if hasattr(exc, "error_dict") else {field: exc.messages}
                self.add_error(field, [f"{name}: {m}" for name, problems in messages.items() for m in problems])
        problems = destination_problems(data.get("actions") or [], data.get("enabled"))
        if problems and "actions" not in self.errors:
            self.add_error("enabled", [f"{name}: {m}" for name, messages in problems.items() for m in messages])
        return data


@admin.register(Automation)
class AutomationAdmin(WorkspaceScopedAdmin):
    form = AutomationForm
    list_display = ["name", "workspace", "enabled", "summary", "last_fired", "default_key"]
    list_filter = ["enabled", "workspace"]
    search_fields = ["name", "description"]
    readonly_fields = ["last_fired", "default_key", "created", "updated"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # As in automations/changes.py: a new trigger, or a disabled automation, starts from nothing.
        if change and ("trigger" in form.changed_data or not obj.enabled):
            TriggerBucket.objects.filter(automation=obj).delete()

    @admin.display(description="Trigger")
    def summary(self, automation):
        return describe(automation.trigger or {})


class ReadOnlyRecordAdmin(WorkspaceScopedAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Firing)
class FiringAdmin(ReadOnlyRecordAdmin):
    list_display = ["fired", "automation", "workspace", "reason"]
    list_filter = ["workspace"]
    search_fields = ["reason", "automation__name"]
    date_hierarchy = "fired"


@admin.register(TriggerBucket)
class TriggerBucketAdmin(ReadOnlyRecordAdmin):
    list_display = ["automation", "path", "key", "count", "opened", "deadline", "fired"]
    search_fields = ["automation__name", "key"]
