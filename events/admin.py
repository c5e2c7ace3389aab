"""Events in the admin: read-only, scoped to the workspaces the user has a role in."""

from django.contrib import admin

from events.models import Event, IncomingWebhook
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


@admin.register(IncomingWebhook)
class IncomingWebhookAdmin(WorkspaceScopedAdmin):
    """Admins of a workspace see its webhooks' URLs (credentials); the secret is only named."""

    list_display = ["name", "workspace", "enabled", "secret_name", "created"]
    list_filter = ["enabled"]
    search_fields = ["name"]
    readonly_fields = ["url", "created"]
    fields = ["workspace", "name", "enabled", "secret_name", "template", "url", "created"]

    @admin.display(description="URL")
    def url(self, obj):
        return obj.path if obj.pk else "(made when saved)"
