"""The Django admin: every model, read-only history and logs, and role-checked actions.

Who may do what is decided in runs/access.py. Staff see the rows of the workspaces where they
have a role (superusers see all). Adding, changing or deleting a row needs the admin role in its
workspace, before and after the change: every reference a form offers is limited to the
workspaces the user administers, and a row whose references lie in another workspace than its
own is refused. The run and schedule actions need operator. Accounts and new workspaces are for
superusers.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from runs import access, scheduling
from runs.models import (
    Account,
    Actor,
    Agent,
    ApiKey,
    Event,
    Flow,
    FlowRun,
    FlowVersion,
    Log,
    Membership,
    Role,
    Schedule,
    State,
    StateChange,
    TaskRun,
    WorkQueue,
    Workspace,
)
from runs.schedules import ScheduleComputeError
from runs.states import transition_flow_runs


class WorkspaceScopedForm(forms.ModelForm):
    """Refuses a row whose references (foreign keys, many-to-many) lie in another workspace than
    the row's own, naming the field: a flow run of workspace A must not point at B's flow or queue."""

    def clean(self):
        data = super().clean()
        model = self._meta.model
        home = self._home_workspace_id(model, data)
        for name, value in list(data.items()):  # add_error drops the field from `data`
            try:
                field = model._meta.get_field(name)
            except FieldDoesNotExist:  # a form-only field
                continue
            if not field.is_relation or access.workspace_path(field.related_model) is None:
                continue
            rows = list(value) if field.many_to_many else [value] if value is not None else []
            if home is not None and any(access.workspace_id_of(row) != home for row in rows):
                self.add_error(name, f"Pick from this {model._meta.verbose_name}'s own workspace.")
        return data

    def _home_workspace_id(self, model, data):
        """The workspace the row will belong to once saved, from the form's data where it says."""
        first, _, rest = access.workspace_path(model).partition("__")
        if not rest:  # "workspace_id", or "id" for a workspace itself
            name = first.removesuffix("_id")
            if name == "id":
                return self.instance.pk
            value = data.get(name, getattr(self.instance, name, None))
            return value.pk if value is not None else None
        parent = data.get(first, getattr(self.instance, first, None))
        return access.workspace_id_of(parent) if parent is not None else None


class WorkspaceScopedAdmin(admin.ModelAdmin):
    """Scopes lists, forms, saves and actions to the user's workspaces (runs/access.py)."""

    form = WorkspaceScopedForm

    @property
    def workspace_path(self):
        return access.workspace_path(self.model)

    def get_queryset(self, request):
        return access.scoped(request, super().get_queryset(request), self.workspace_path, self.read_role)

    @property
    def read_role(self):
        return access.read_role(self.model)

    def _has_role(self, request, role, obj=None):
        allowed = access.workspace_ids_for(request, role)
        if allowed is None:
            return True
        if obj is None:
            return bool(allowed)
        return access.workspace_id_of(obj) in allowed

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff and self._has_role(request, self.read_role)

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request) and self._has_role(request, self.read_role, obj)

    def has_change_permission(self, request, obj=None):
        return request.user.is_staff and self._has_role(request, Role.ADMIN, obj)

    def has_add_permission(self, request):
        return request.user.is_staff and self._has_role(request, Role.ADMIN)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_staff and self._has_role(request, Role.ADMIN, obj)

    def has_operate_permission(self, request):
        """Used by actions marked permissions=["operate"]."""
        return request.user.is_staff and self._has_role(request, Role.OPERATOR)

    # Forms offer only rows of the workspaces the user administers; a crafted POST naming
    # another one fails the field's validation like any unknown choice.
    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        kwargs["queryset"] = self.choices_for(db_field, request, kwargs.get("queryset"))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        kwargs["queryset"] = self.choices_for(db_field, request, kwargs.get("queryset"))
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def choices_for(self, db_field, request, queryset=None):
        """The rows a relation field may point at: those in the workspaces the user administers;
        people, among the members of those workspaces."""
        related = db_field.remote_field.model
        if queryset is None:
            queryset = self.get_field_queryset(None, db_field, request)
        if queryset is None:
            queryset = related._default_manager.all()
        allowed = access.workspace_ids_for(request, Role.ADMIN)
        if related is get_user_model():
            return queryset if allowed is None else queryset.filter(memberships__workspace_id__in=allowed).distinct()
        path = access.workspace_path(related)
        return queryset if path is None else access.within(allowed, queryset, path)

    def save_model(self, request, obj, form, change):
        self.check_may_write(request, obj)
        super().save_model(request, obj, form, change)

    def check_may_write(self, request, obj):
        """Re-checks on the server, whatever the form offered, that the row as it will be saved is
        in a workspace the user administers."""
        if not self._has_role(request, Role.ADMIN, obj):
            raise PermissionDenied("You need the admin role in this row's workspace.")

    def get_list_filter(self, request):
        # A filter on a relation offers only the values of rows in the list, never another
        # tenant's workspaces, flows or queues.
        return [related_only(self.model, f) for f in super().get_list_filter(request)]

    def split_by_role(self, request, queryset, role=Role.OPERATOR):
        """The part of `queryset` the user may act on; tells them about the rest."""
        permitted = access.scoped(request, queryset, self.workspace_path, role)
        if permitted is queryset:
            return queryset
        refused = queryset.count() - permitted.count()
        if refused:
            self.message_user(
                request, f"{refused} selected item(s) skipped: you need the {role} role in their workspace.",
                messages.WARNING,
            )
        return permitted


def related_only(model, list_filter):
    """A list filter on a relation, offering only the related rows of the (scoped) list."""
    if isinstance(list_filter, str) and get_fields_from_path(model, list_filter)[-1].is_relation:
        return (list_filter, admin.RelatedOnlyFieldListFilter)
    return list_filter


class PlatformOnly:
    """For a ModelAdmin of rows that belong to no workspace (accounts, the services' records and
    beat rows, which act for every workspace): superusers only, whatever Django permissions say."""

    def has_module_permission(self, request):
        return access.is_platform_admin(request.user)

    def has_view_permission(self, request, obj=None):
        return access.is_platform_admin(request.user)

    def has_add_permission(self, request):
        return access.is_platform_admin(request.user)

    def has_change_permission(self, request, obj=None):
        return access.is_platform_admin(request.user)

    def has_delete_permission(self, request, obj=None):
        return access.is_platform_admin(request.user)


class ReadOnlyInline(admin.TabularInline):
    """Rows of the object on the page, shown to whoever may see that object."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request, obj=None):
        return True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- tenancy --------------------------------------------------------------------------------

class MembershipInline(admin.TabularInline):
    """The workspace's members on its page: its admins manage them."""

    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["created"]

    def _administers(self, request, workspace):
        return access.may(request, Role.ADMIN, workspace.pk if workspace else None)

    def has_view_permission(self, request, obj=None):
        return self._administers(request, obj)  # members are for admins to see, as in the API

    def has_add_permission(self, request, obj=None):
        return self._administers(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._administers(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._administers(request, obj)


@admin.register(Account)
class AccountAdmin(PlatformOnly, admin.ModelAdmin):
    list_display = ["name", "slug", "created"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        return access.scoped(request, super().get_queryset(request), "workspaces__id").distinct()

    # Staff see the accounts of their workspaces; only superusers add or change accounts.
    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff and access.workspace_ids_for(
            request, Role.VIEWER) != set()

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request) and (
            obj is None or self.get_queryset(request).filter(pk=obj.pk).exists())


@admin.register(Workspace)
class WorkspaceAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "account", "slug", "run_retention_days", "created"]
    list_filter = ["account"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]

    def has_add_permission(self, request):
        return access.is_platform_admin(request.user)  # a new workspace has no admin to manage it yet

    def get_readonly_fields(self, request, obj=None):
        # Moving a workspace into another account would hand it to another tenant.
        readonly = list(super().get_readonly_fields(request, obj))
        return readonly if access.is_platform_admin(request.user) else readonly + ["account"]


@admin.register(Membership)
class MembershipAdmin(WorkspaceScopedAdmin):
    list_display = ["user", "workspace", "role", "created"]
    list_filter = ["role", "workspace"]
    search_fields = ["user__username", "user__email"]
    autocomplete_fields = ["user"]
    readonly_fields = ["created"]

    def choices_for(self, db_field, request, queryset=None):
        if db_field.name == "user":  # any person may be added to a workspace one administers, as in the API
            return queryset if queryset is not None else db_field.remote_field.model._default_manager.all()
        return super().choices_for(db_field, request, queryset)


@admin.register(ApiKey)
class ApiKeyAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "workspace", "role", "prefix", "user", "created", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["role", "workspace"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "last_used_at", "created"]
    fields = ["workspace", "name", "role", "user", "expires_at", "revoked_at", "prefix", "last_used_at", "created"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        self.check_may_write(request, obj)
        if change:
            return super().save_model(request, obj, form, change)
        key, secret = ApiKey.issue(
            workspace=obj.workspace, name=obj.name, role=obj.role, user=obj.user, expires_at=obj.expires_at
        )
        obj.pk, obj.prefix = key.pk, key.prefix
        self.message_user(request, f"The key's secret, shown this once: {secret}", messages.WARNING)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset):
        count = self.split_by_role(request, queryset, Role.ADMIN).filter(revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        self.message_user(request, f"Revoked {count} key(s).")


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
    list_display = ["flow", "version", "entrypoint", "is_latest", "archived", "created"]
    list_filter = ["is_latest", "archived"]
    search_fields = ["flow__name", "version", "entrypoint"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        self.check_may_write(request, obj)
        version = obj.flow.register_version(
            entrypoint=obj.entrypoint, version=obj.version, parameters=obj.parameters, job_env=obj.job_env
        )
        obj.pk = version.pk


@admin.register(Schedule)
class ScheduleAdmin(WorkspaceScopedAdmin):
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
            deleted = sum(scheduling.pause_schedule(s, now) for s in queryset)
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
                created += scheduling.resume_schedule(schedule, now)
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
                       "run_count", "lazarus_count", "created_by", "agent", "created"]
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
