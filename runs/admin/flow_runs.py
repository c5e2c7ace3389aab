"""Flow runs with their task runs, history and logs; cancel and mark-failed actions."""

from django.contrib import admin

from runs.models import Actor, FlowRun, Log, State, StateChange, TaskRun
from runs.states import transition_flow_runs

from .base import ReadOnlyInline, WorkspaceScopedAdmin, age


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


@admin.register(FlowRun)
class FlowRunAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "flow", "state", "scheduled_start", "heartbeat", "agent", "work_queue", "auto_scheduled",
                    "lazarus_count"]
    list_filter = ["state", "auto_scheduled", "work_queue", "flow__workspace", "flow"]
    search_fields = ["name", "id", "flow__name"]

    def get_queryset(self, request):
        # Soft-deleted runs (retention) and runs of a flow or schedule being deleted are gone from every list.
        return super().get_queryset(request).listed()
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

