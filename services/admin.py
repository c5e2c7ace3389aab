"""Admin for Towel's ledger: every pass of every service, filterable by service and outcome."""

from django.contrib import admin

from services.models import ServiceLease, ServicePass


@admin.register(ServicePass)
class ServicePassAdmin(admin.ModelAdmin):
    list_display = ("service", "started", "duration_ms", "items", "ok")
    list_filter = ("service", "ok")
    date_hierarchy = "started"
    readonly_fields = ("service", "started", "duration_ms", "items", "summary", "ok", "error")

    def has_add_permission(self, request):
        return False  # the ledger is written by Towel only


@admin.register(ServiceLease)
class ServiceLeaseAdmin(admin.ModelAdmin):
    list_display = ("service", "holder", "expires")
    readonly_fields = ("service", "holder", "expires")

    def has_add_permission(self, request):
        return False
