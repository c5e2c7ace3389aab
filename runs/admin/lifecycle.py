"""Background deletion in the admin: deleting a flow, a schedule or a workspace goes through the
actions layer (runs/actions.py: marked deleted at once, with its audit entry; rows deleted by a
Celery task), and the deletion jobs' progress is listed here."""

from django.contrib import admin, messages
from django.utils.html import format_html

from runs import actions
from runs.audit import Who
from runs.models import DeletionJob

from .base import WorkspaceScopedAdmin, WrittenByTheSystem


class DeletesInBackground:
    """For the admin of a model deleted in the background (Flow, Schedule, Workspace)."""

    def delete_model(self, request, obj):
        job = actions.delete_in_background(obj, who=Who.of(request, "admin"))
        if job is not None:
            self.message_user(request, f"{obj} is deleted; its rows go in the background (deletion job {job.pk}).",
                              messages.INFO)

    def delete_queryset(self, request, queryset):
        who = Who.of(request, "admin")
        for obj in queryset:
            actions.delete_in_background(obj, who=who)

    def get_deleted_objects(self, objs, request):
        # Django's confirmation page would load every run, task run and log to list them; a
        # background deletion names what goes instead.
        objs = list(objs)
        perms_needed = {self.model._meta.verbose_name} if any(
            not self.has_delete_permission(request, obj) for obj in objs) else set()
        listed = [f"{self.model._meta.verbose_name.capitalize()}: {obj}, with its runs, task runs, history and logs "
                  f"(deleted in the background; follow it under Deletion jobs)" for obj in objs]
        return listed, {self.model._meta.verbose_name_plural: len(objs)}, perms_needed, []


@admin.register(DeletionJob)
class DeletionJobAdmin(WrittenByTheSystem, WorkspaceScopedAdmin):
    list_display = ["target_name", "target_type", "workspace_name", "state", "runs_deleted", "rows_deleted",
                    "requested_by", "created", "started", "finished", "attempts", "short_error"]
    list_filter = ["state", "target_type"]
    search_fields = ["target_name", "workspace_name", "requested_by"]
    readonly_fields = [f.name for f in DeletionJob._meta.fields]

    @admin.display(description="error")
    def short_error(self, job):
        return format_html("{}", job.error[:120]) if job.error else ""
