"""The delivery log in the admin: read-only, scoped to the user's workspaces, with a retry action
for operators (the same function as the API's and the dashboard's)."""

from django.contrib import admin
from django.utils import timezone

from automations import deliveries
from automations.messages import shown_target
from automations.models import Delivery
from runs.admin.base import WorkspaceScopedAdmin, WrittenByTheSystem
from runs.audit import Who


@admin.register(Delivery)
class DeliveryAdmin(WrittenByTheSystem, WorkspaceScopedAdmin):
    """A log: rows are written by automations and the deliveries service, never by hand."""

    list_display = ["created", "workspace", "kind", "shown", "status", "attempts", "next_attempt", "last_status_code",
                    "error"]
    list_filter = ["status", "kind"]
    list_select_related = ["workspace__account"]
    date_hierarchy = "created"
    actions = ["retry"]
    # The target in full and the body are shown on the row's own page; the list hides tokens in URLs.
    readonly_fields = ["workspace", "firing", "kind", "target", "subject", "body", "secret_name", "status", "attempts",
                       "next_attempt", "last_status_code", "last_error", "created", "delivered"]

    @admin.display(description="target")
    def shown(self, delivery):
        return shown_target(delivery.kind, delivery.target)

    @admin.display(description="last error")
    def error(self, delivery):
        return delivery.last_error[:120]


    @admin.action(description="Retry selected deliveries now", permissions=["operate"])
    def retry(self, request, queryset):
        count = deliveries.retry(self.split_by_role(request, queryset), who=Who.of(request, "admin"),
                                 now=timezone.now())
        self.message_user(request, f"{count} deliveries are due now; delivered ones were left alone.")
