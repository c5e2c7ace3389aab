"""Events in the admin: read-only, scoped to the workspaces the user has a role in."""

from django.contrib import admin

from events.models import Event
from runs.admin import WorkspaceScopedAdmin


@admin.register(Event)
class EventAdmin(WorkspaceScopedAdmin):
    list_display = ["occurred", "name", "workspace", "resource"]
    list_filter = ["name"]
    search_fields = ["name"]
    date_hierarchy = "occurred"
    # Counting a partitioned table of millions of rows for every page is not worth its seconds.
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
