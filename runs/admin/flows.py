"""Flows, their versions and schedules, with the pause (after a confirm step), resume and run-now actions."""

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from runs import actions, scheduling
from runs.audit import Who
from runs.models import Flow, FlowRun, FlowVersion, Schedule
from runs.schedules import ScheduleComputeError

from .base import ReadOnlyInline, WorkspaceScopedAdmin
from .lifecycle import DeletesInBackground


class FlowVersionInline(ReadOnlyInline):
    model = FlowVersion
    fields = ["version", "entrypoint", "is_latest", "archived", "created"]
    readonly_fields = fields


class ScheduleInline(ReadOnlyInline):
    model = Schedule
    fields = ["slug", "kind", "status", "timezone", "work_queue"]
    readonly_fields = fields
    show_change_link = True


@admin.register(Flow)
class FlowAdmin(DeletesInBackground, WorkspaceScopedAdmin):
    list_display = ["name", "workspace", "created"]
    list_filter = ["workspace"]
    search_fields = ["name"]
    inlines = [FlowVersionInline, ScheduleInline]
    actions = ["run_now"]

    @admin.action(description="Run selected flows now", permissions=["operate"])
    def run_now(self, request, queryset):
        runs = [scheduling.create_manual_run(flow, user=request.user)[0] for flow in self.split_by_role(request, queryset)]
        self.message_user(request, f"Created {len(runs)} run(s): " + ", ".join(r.name for r in runs))


@admin.register(FlowVersion)
class FlowVersionAdmin(WorkspaceScopedAdmin):
    list_display = ["flow", "version", "entrypoint", "is_latest", "archived", "created"]
    list_filter = ["is_latest", "archived"]
    search_fields = ["flow__name", "version", "entrypoint"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        self.check_may_write(request, obj)
        version = obj.flow.register_version(
            entrypoint=obj.entrypoint, version=obj.version, parameters=obj.parameters, job_env=obj.job_env,
            secrets=obj.secrets,
        )
        obj.pk = version.pk


@admin.register(Schedule)
class ScheduleAdmin(DeletesInBackground, WorkspaceScopedAdmin):
    list_display = ["__str__", "kind", "when", "timezone", "status_badge", "runs_version", "work_queue", "updated"]
    list_filter = ["status", "kind", "flow__workspace"]
    search_fields = ["slug", "flow__name", "cron"]
    readonly_fields = ["next_runs_preview", "created", "updated"]
    # An id box, not a menu of every version of every flow; the model's clean() refuses another flow's.
    raw_id_fields = ["flow_version"]
    list_select_related = ["flow", "flow_version", "work_queue"]
    actions = ["pause", "resume", "run_now", "follow_latest"]
    fieldsets = [
        (None, {"fields": ["flow", "slug", "description", "status", "work_queue", "parameters", "flow_version"]}),
        ("When", {"fields": ["kind", "interval_seconds", "anchor", "cron", "rrule", "calendar", "timezone",
                             "dst_nonexistent", "dst_ambiguous", "next_runs_preview"]}),
        ("Catching up", {"fields": ["catchup_max_runs", "only_newest_when_late"]}),
        (None, {"fields": ["created", "updated"]}),
    ]

    @admin.display(description="When")
    def when(self, schedule):
        return schedule.describe()

    @admin.display(description="Runs version")
    def runs_version(self, schedule):
        if schedule.flow_version_id is None:
            return "the latest"
        return f"pinned: {schedule.flow_version.version or '#' + str(schedule.flow_version_id)}"

    @admin.action(description="Unpin selected schedules (follow the latest version)", permissions=["operate"])
    def follow_latest(self, request, queryset):
        who = Who.of(request, "admin")
        pinned = [s for s in self.split_by_role(request, queryset).select_related("flow") if s.flow_version_id]
        for schedule in pinned:
            actions.pin_schedule(schedule, None, who=who)
        self.message_user(request, f"{len(pinned)} schedule(s) now follow their flow's latest version.")

    @admin.display(description="Status", ordering="status")
    def status_badge(self, schedule):
        return schedule.get_status_display()

    @admin.display(description="Next 10 fire times")
    def next_runs_preview(self, schedule):
        if not schedule.pk:
            return "Shown once saved."
        try:
            times = schedule.next_fire_times(timezone.now(), 10)
        except ScheduleComputeError as exc:  # a rule saved before it was validated: the page still opens
            return f"Cannot compute: {_problems(exc)}"
        zone = schedule.timezone
        return format_html("<br>".join("{}" for _ in times), *[f"{t.astimezone(zone):%a %Y-%m-%d %H:%M:%S %Z}" for t in times])

    def save_model(self, request, obj, form, change):
        # The admin's view runs in a transaction: a rescheduling that fails undoes the save (and its
        # audit entry) with it.
        super().save_model(request, obj, form, change)
        scheduling.reschedule_after_edit(obj, timezone.now())

    def changeform_view(self, request, *args, **kwargs):
        # The form validated the rule, so its runs are made almost always; when they cannot be
        # (it ran past the time budget this time), the transaction is undone and the form shown again.
        try:
            return super().changeform_view(request, *args, **kwargs)
        except ValidationError as exc:  # ScheduleComputeError, from save_model's rescheduling
            self.message_user(request, f"Not saved: {_problems(exc)}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    @admin.action(description="Pause selected schedules (deletes their future runs)", permissions=["operate"])
    def pause(self, request, queryset):
        queryset = self.split_by_role(request, queryset)
        now = timezone.now()
        if request.POST.get("confirmed") == "yes":
            who = Who.of(request, "admin")
            deleted = sum(actions.pause_schedule(s, who=who, now=now) for s in queryset)
            self.message_user(request, f"Paused {queryset.count()} schedule(s); deleted {deleted} future run(s).")
            return None
        counts = dict(
            FlowRun.objects.filter(schedule__in=queryset).future_auto_scheduled(now)
            .values_list("schedule").annotate(n=Count("id")).values_list("schedule", "n")
        )
        rows = [(s, counts.get(s.pk, 0)) for s in queryset]
        return TemplateResponse(request, "admin/runs/schedule/pause_confirmation.html", {
            **self.admin_site.each_context(request),
            "title": "Pause schedules?",
            "rows": rows,
            "total": sum(n for _, n in rows),
            "queryset": queryset,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })

    @admin.action(description="Resume selected schedules", permissions=["operate"])
    def resume(self, request, queryset):
        queryset = self.split_by_role(request, queryset)
        now = timezone.now()
        resumed, created = 0, 0
        for schedule in queryset.select_related("flow"):
            try:
                created += actions.resume_schedule(schedule, who=Who.of(request, "admin"), now=now)
                resumed += 1
            except ScheduleComputeError as exc:  # it stays paused; the others are resumed
                self.message_user(request, f"Not resumed {schedule}: {_problems(exc)}", messages.ERROR)
        self.message_user(request, f"Resumed {resumed} schedule(s); created {created} run(s).")

    @admin.action(description="Run selected schedules' flows now", permissions=["operate"])
    def run_now(self, request, queryset):
        runs = [scheduling.create_manual_run(s.flow, user=request.user, schedule=s)[0]
                for s in self.split_by_role(request, queryset).select_related("flow", "work_queue")]
        self.message_user(request, f"Created {len(runs)} run(s).")


def _problems(error):
    """A ValidationError's messages on one line, each after its field."""
    if not hasattr(error, "error_dict"):
        return " ".join(error.messages)
    return "; ".join(f"{field}: {' '.join(problems)}" for field, problems in error.message_dict.items())
