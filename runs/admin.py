"""The Django admin: every model, read-only history and logs, and role-checked actions.

Staff see only the workspaces they are members of (superusers see all). Changing data needs
the admin role in the object's workspace; the run and schedule actions need operator.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from runs import actions, audit, scheduling, vault
from runs.audit import Who
from runs.models import (
    Account,
    Actor,
    Agent,
    ApiKey,
    AuditEntry,
    Event,
    Flow,
    FlowRun,
    FlowVersion,
    Log,
    Membership,
    Role,
    Schedule,
    Secret,
    State,
    StateChange,
    TaskRun,
    WorkQueue,
    Workspace,
    role_allows,
)
from runs.schedules import ScheduleComputeError
from runs.states import transition_flow_runs


def workspace_ids_with_role(user, role):
    """Ids of the workspaces where `user` has at least `role`; None means every workspace."""
    if user.is_superuser:
        return None
    memberships = Membership.objects.filter(user=user).values_list("workspace_id", "role")
    return {w for w, r in memberships if role_allows(r, role)}


class WorkspaceScopedAdmin(admin.ModelAdmin):
    """Scopes lists and rights to the user's workspaces. `workspace_path` leads to the workspace id."""

    workspace_path = "workspace_id"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        allowed = workspace_ids_with_role(request.user, Role.VIEWER)
        return queryset if allowed is None else queryset.filter(**{f"{self.workspace_path}__in": allowed})

    def _has_role(self, request, role, obj=None):
        allowed = workspace_ids_with_role(request.user, role)
        if allowed is None:
            return True
        if obj is None:
            return bool(allowed)
        return self._workspace_of(obj) in allowed

    def _workspace_of(self, obj):
        value = obj
        for part in self.workspace_path.removesuffix("_id").split("__"):
            value = getattr(value, part)
        return value.pk if hasattr(value, "pk") else value

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff and self._has_role(request, Role.VIEWER)

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request) and self._has_role(request, Role.VIEWER, obj)

    def has_change_permission(self, request, obj=None):
        return request.user.is_staff and self._has_role(request, Role.ADMIN, obj)

    def has_add_permission(self, request):
        return request.user.is_staff and self._has_role(request, Role.ADMIN)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_staff and self._has_role(request, Role.ADMIN, obj)

    # --- the audit trail: every add, change and delete of an audited model (runs/audit.py) ---

    def save_model(self, request, obj, form, change):
        if not audit.is_audited(type(obj)):
            return super().save_model(request, obj, form, change)
        before = audit.snapshot(type(obj).objects.get(pk=obj.pk)) if change else None
        kind = audit.TYPE_NAMES[type(obj)]

        def save():
            super(WorkspaceScopedAdmin, self).save_model(request, obj, form, change)
            return obj

        actions.save_with_audit(save, who=Who.of(request, "admin"), action=f"{kind}.{'change' if change else 'create'}",
                                before=before)

    def delete_model(self, request, obj):
        if audit.is_audited(type(obj)):
            audit.record(Who.of(request, "admin"), f"{audit.TYPE_NAMES[type(obj)]}.delete", obj,
                         before=audit.snapshot(obj))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        if audit.is_audited(queryset.model):
            who = Who.of(request, "admin")
            for obj in queryset:
                audit.record(who, f"{audit.TYPE_NAMES[queryset.model]}.delete", obj, before=audit.snapshot(obj))
        super().delete_queryset(request, queryset)

    def save_formset(self, request, form, formset, change):
        if not audit.is_audited(formset.model):
            return super().save_formset(request, form, formset, change)
        who, kind = Who.of(request, "admin"), audit.TYPE_NAMES[formset.model]
        before = {obj.pk: audit.snapshot(obj) for obj in formset.model.objects.filter(
            pk__in=[f.instance.pk for f in formset.initial_forms if f.instance.pk])}
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            audit.record(who, f"{kind}.create", obj, after=audit.snapshot(obj))
        for obj, _ in formset.changed_objects:
            old, new = audit.changed(before.get(obj.pk, {}), audit.snapshot(obj))
            if new:
                audit.record(who, f"{kind}.change", obj, before=old, after=new)
        for obj in formset.deleted_objects:
            audit.record(who, f"{kind}.delete", obj, before=audit.snapshot(obj))

    def has_operate_permission(self, request):
        """Used by actions marked permissions=["operate"]."""
        return request.user.is_staff and self._has_role(request, Role.OPERATOR)

    def split_by_role(self, request, queryset, role=Role.OPERATOR):
        """The part of `queryset` the user may act on; tells them about the rest."""
        allowed = workspace_ids_with_role(request.user, role)
        if allowed is None:
            return queryset
        permitted = queryset.filter(**{f"{self.workspace_path}__in": allowed})
        refused = queryset.count() - permitted.count()
        if refused:
            self.message_user(
                request, f"{refused} selected item(s) skipped: you need the {role} role in their workspace.",
                messages.WARNING,
            )
        return permitted


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- tenancy --------------------------------------------------------------------------------

class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Workspace)
class WorkspaceAdmin(WorkspaceScopedAdmin):
    workspace_path = "id"
    list_display = ["name", "account", "slug", "run_retention_days", "created"]
    list_filter = ["account"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(WorkspaceScopedAdmin):
    list_display = ["user", "workspace", "role", "created"]
    list_filter = ["role", "workspace"]
    search_fields = ["user__username", "user__email"]
    autocomplete_fields = ["user"]


@admin.register(ApiKey)
class ApiKeyAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "workspace", "role", "prefix", "user", "created", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["role", "workspace"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "last_used_at", "created"]
    fields = ["workspace", "name", "role", "user", "expires_at", "revoked_at", "prefix", "last_used_at", "created"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        key, secret = actions.issue_key(obj.workspace, name=obj.name, role=obj.role, user=obj.user,
                                        expires_at=obj.expires_at, who=Who.of(request, "admin"))
        obj.pk, obj.prefix = key.pk, key.prefix
        self.message_user(request, f"The key's secret, shown this once: {secret}", messages.WARNING)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset):
        count = actions.revoke_keys(self.split_by_role(request, queryset, Role.ADMIN), who=Who.of(request, "admin"))
        self.message_user(request, f"Revoked {count} key(s).")


class SecretForm(forms.ModelForm):
    """A secret's name and workspace, and a value that is written, never shown (not even on change)."""

    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False), strip=False, max_length=vault.MAX_VALUE_CHARS,
        help_text="Never shown again. On change, leave empty to keep the current value.",
    )

    class Meta:
        model = Secret
        fields = ["workspace", "name"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["value"].required = False


@admin.register(Secret)
class SecretAdmin(WorkspaceScopedAdmin):
    form = SecretForm
    list_display = ["name", "workspace", "updated", "updated_by", "created"]
    list_filter = ["workspace"]
    search_fields = ["name"]
    readonly_fields = ["updated", "updated_by", "created"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "workspace", "name"] if obj else self.readonly_fields

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "workspace":
            allowed = workspace_ids_with_role(request.user, Role.ADMIN)
            if allowed is not None:
                kwargs["queryset"] = Workspace.objects.filter(pk__in=allowed)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        allowed = workspace_ids_with_role(request.user, Role.ADMIN)
        if allowed is not None and obj.workspace_id not in allowed:
            raise PermissionDenied("You need the admin role in the secret's workspace.")
        if form.cleaned_data.get("value"):
            obj.set_value(form.cleaned_data["value"], request.user.get_username())
        super().save_model(request, obj, form, change)


# --- flows and schedules --------------------------------------------------------------------

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
class FlowAdmin(WorkspaceScopedAdmin):
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
    workspace_path = "flow__workspace_id"
    list_display = ["flow", "version", "entrypoint", "is_latest", "archived", "created"]
    list_filter = ["is_latest", "archived"]
    search_fields = ["flow__name", "version", "entrypoint"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        version = obj.flow.register_version(
            entrypoint=obj.entrypoint, version=obj.version, parameters=obj.parameters, job_env=obj.job_env,
            secrets=obj.secrets,
        )
        obj.pk = version.pk


@admin.register(Schedule)
class ScheduleAdmin(WorkspaceScopedAdmin):
    workspace_path = "flow__workspace_id"
    list_display = ["__str__", "kind", "when", "timezone", "status_badge", "work_queue", "updated"]
    list_filter = ["status", "kind", "flow__workspace"]
    search_fields = ["slug", "flow__name", "cron"]
    readonly_fields = ["next_runs_preview", "created", "updated"]
    actions = ["pause", "resume", "run_now"]
    fieldsets = [
        (None, {"fields": ["flow", "slug", "description", "status", "work_queue", "parameters"]}),
        ("When", {"fields": ["kind", "interval_seconds", "anchor", "cron", "rrule", "calendar", "timezone",
                             "dst_nonexistent", "dst_ambiguous", "next_runs_preview"]}),
        ("Catching up", {"fields": ["catchup_max_runs", "only_newest_when_late"]}),
        (None, {"fields": ["created", "updated"]}),
    ]

    @admin.display(description="When")
    def when(self, schedule):
        return schedule.describe()

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
        # The admin's view runs in a transaction: a rescheduling that fails undoes the save with it.
        before = audit.snapshot(Schedule.objects.get(pk=obj.pk)) if change else None

        def save():
            admin.ModelAdmin.save_model(self, request, obj, form, change)
            return obj

        actions.save_schedule(save, who=Who.of(request, "admin"), before=before)

    def delete_model(self, request, obj):
        actions.delete_schedule(obj, who=Who.of(request, "admin"))

    def delete_queryset(self, request, queryset):
        who = Who.of(request, "admin")
        for schedule in queryset.select_related("flow"):
            actions.delete_schedule(schedule, who=who)

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


# --- runs -----------------------------------------------------------------------------------

class FlowRunHistoryInline(ReadOnlyInline):
    model = StateChange
    fk_name = "flow_run"
    fields = ["timestamp", "from_state", "to_state", "actor", "user", "agent", "task_run", "message"]
    readonly_fields = fields
    verbose_name_plural = "State history"


class FlowRunLogInline(ReadOnlyInline):
    model = Log
    fields = ["timestamp", "level", "source", "task_run", "message"]
    readonly_fields = fields


class TaskRunInline(ReadOnlyInline):
    model = TaskRun
    fields = ["task_key", "state", "run_count", "start_time", "end_time", "last_heartbeat"]
    readonly_fields = fields
    show_change_link = True


def age(moment, now=None):
    """'42 s ago' style age of a datetime, or a dash."""
    if moment is None:
        return "—"
    seconds = int(((now or timezone.now()) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@admin.register(FlowRun)
class FlowRunAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "flow", "state", "scheduled_start", "heartbeat", "agent", "work_queue", "auto_scheduled",
                    "lazarus_count"]
    list_filter = ["state", "auto_scheduled", "work_queue", "flow__workspace", "flow"]
    search_fields = ["name", "id", "flow__name"]
    date_hierarchy = "scheduled_start"
    list_select_related = ["flow", "agent", "work_queue"]
    readonly_fields = ["state", "state_message", "state_changed", "start_time", "end_time", "last_heartbeat",
                       "run_count", "lazarus_count", "created_by", "created_by_key", "agent", "created"]
    raw_id_fields = ["flow_version", "schedule", "parent_task_run"]
    inlines = [TaskRunInline, FlowRunHistoryInline, FlowRunLogInline]
    actions = ["cancel", "mark_failed"]

    @admin.display(description="Last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, run):
        return age(run.last_heartbeat)

    @admin.action(description="Cancel selected runs", permissions=["operate"])
    def cancel(self, request, queryset):
        queryset = self.split_by_role(request, queryset)
        message = f"Cancelled by {request.user} from the admin."
        # Runs that have not started stop at once; started ones are asked to stop (CANCELLING),
        # and their agent or the cancellation cleanup finishes the job.
        stopped = transition_flow_runs(queryset.filter(state__in=[State.SCHEDULED, State.LATE, State.PAUSED]),
                                       State.CANCELLED, actor=Actor.USER, user=request.user, message=message)
        asked = transition_flow_runs(queryset.filter(state__in=[State.SUBMITTED, State.RUNNING]),
                                     State.CANCELLING, actor=Actor.USER, user=request.user, message=message)
        skipped = queryset.count() - len(stopped) - len(asked)
        self.message_user(request, f"Cancelled {len(stopped)} run(s), asked {len(asked)} running run(s) to stop"
                          + (f"; {skipped} already finished or cancelling, left alone." if skipped else "."))

    @admin.action(description="Mark selected runs failed", permissions=["operate"])
    def mark_failed(self, request, queryset):
        moved = transition_flow_runs(self.split_by_role(request, queryset), State.FAILED, actor=Actor.USER,
                                     user=request.user, message=f"Marked failed by {request.user} from the admin.")
        self.message_user(request, f"Marked {len(moved)} run(s) failed.")


@admin.register(TaskRun)
class TaskRunAdmin(WorkspaceScopedAdmin):
    workspace_path = "flow_run__workspace_id"
    list_display = ["task_key", "flow_run", "state", "run_count", "start_time", "heartbeat"]
    list_filter = ["state"]
    search_fields = ["task_key", "id", "flow_run__name"]
    list_select_related = ["flow_run"]
    readonly_fields = ["state", "state_message", "state_changed", "start_time", "end_time", "last_heartbeat", "run_count"]
    raw_id_fields = ["flow_run"]

    @admin.display(description="Last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, task_run):
        return age(task_run.last_heartbeat)


@admin.register(StateChange)
class StateChangeAdmin(WorkspaceScopedAdmin):
    workspace_path = "flow_run__workspace_id"
    list_display = ["timestamp", "flow_run", "task_run", "from_state", "to_state", "actor", "user", "message"]
    list_filter = ["actor", "to_state"]
    search_fields = ["flow_run__name", "message"]
    list_select_related = ["flow_run", "task_run", "user"]
    date_hierarchy = "timestamp"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Log)
class LogAdmin(WorkspaceScopedAdmin):
    list_display = ["timestamp", "level", "source", "flow_run", "task_run", "message"]
    list_filter = ["source", "level"]
    search_fields = ["message", "flow_run__name"]
    list_select_related = ["flow_run", "task_run"]
    date_hierarchy = "timestamp"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WorkQueue)
class WorkQueueAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "workspace", "work_pool", "concurrency_limit", "paused", "polled"]
    list_filter = ["paused", "workspace"]
    search_fields = ["name", "work_pool"]

    @admin.display(description="Last polled", ordering="last_polled")
    def polled(self, queue):
        return age(queue.last_polled)


@admin.register(Agent)
class AgentAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "workspace", "status", "heartbeat", "version"]
    list_filter = ["status", "workspace"]
    search_fields = ["name"]
    filter_horizontal = ["queues"]

    @admin.display(description="Last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, agent):
        return age(agent.last_heartbeat)


@admin.register(AuditEntry)
class AuditEntryAdmin(WorkspaceScopedAdmin):
    """The audit trail, read-only: visible to the workspace's admins."""

    list_display = ["occurred", "workspace", "actor", "via", "action", "target_name", "before", "after"]
    list_filter = ["via", "target_type", "workspace"]
    search_fields = ["actor", "action", "target_name"]
    date_hierarchy = "occurred"

    def get_queryset(self, request):
        queryset = admin.ModelAdmin.get_queryset(self, request)
        allowed = workspace_ids_with_role(request.user, Role.ADMIN)
        return queryset if allowed is None else queryset.filter(workspace_id__in=allowed)

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff and self._has_role(request, Role.ADMIN, obj)

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Event)
class EventAdmin(WorkspaceScopedAdmin):
    list_display = ["occurred", "name", "workspace", "resource"]
    list_filter = ["name"]
    search_fields = ["name"]
    date_hierarchy = "occurred"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
