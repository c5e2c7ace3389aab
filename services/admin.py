"""Admin for Towel's ledger (every pass of every service), and beat's rows of the services.

A service's PeriodicTask row shows its interval read-only, naming the environment variable that
sets it (applied on every beat start and migrate, services/beat.py); its one admin switch is
`enabled`. Other PeriodicTask rows keep django-celery-beat's full form.

These rows act for every workspace: only superusers see or change them (runs.admin.base.PlatformOnly).
"""

from django import forms
from django.contrib import admin
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from runs.admin.base import PlatformOnly
from services.beat import service_of
from services.models import ServiceLease, ServicePass, ServiceSchedule


@admin.register(ServicePass)
class ServicePassAdmin(PlatformOnly, admin.ModelAdmin):
    list_display = ("service", "started", "duration_ms", "items", "ok")
    list_filter = ("service", "ok")
    date_hierarchy = "started"
    readonly_fields = ("service", "started", "duration_ms", "items", "summary", "ok", "error")

    def has_add_permission(self, request):
        return False  # the ledger is written by Towel only


@admin.register(ServiceLease)
class ServiceLeaseAdmin(PlatformOnly, admin.ModelAdmin):
    list_display = ("service", "holder", "expires")
    readonly_fields = ("service", "holder", "expires")

    def has_add_permission(self, request):
        return False


@admin.register(ServiceSchedule)
class ServiceScheduleAdmin(PlatformOnly, admin.ModelAdmin):
    list_display = ("service", "expected_since")
    readonly_fields = ("service", "expected_since")

    def has_add_permission(self, request):
        return False  # recorded by beat starts and migrate (services/beat.py)


class ServiceTaskForm(forms.ModelForm):
    class Meta:
        model = PeriodicTask
        fields = ["enabled"]


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(PlatformOnly, BeatPeriodicTaskAdmin):
    list_display = ("name", "enabled", "scheduler", "interval_set_by", "last_run_at")

    @admin.display(description="interval set by")
    def interval_set_by(self, obj):
        service = service_of(obj.name)
        return service.interval_variable if service else "this row"

    @admin.display(description="interval")
    def interval_from_environment(self, obj):
        service = service_of(obj.name)
        return (f"every {service.interval_seconds} s, set by the environment variable {service.interval_variable} "
                f"and applied on every beat start and migrate: change the variable and restart beat to change it. "
                f"Disable the service here rather than deleting it (a deleted row comes back on the next start).")

    def get_fieldsets(self, request, obj=None):
        if obj is not None and service_of(obj.name):
            return ((None, {"fields": ("name", "enabled", "interval_from_environment", "description", "task", "args",
                                       "last_run_at", "total_run_count")}),)
        return super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and service_of(obj.name):
            return ("name", "interval_from_environment", "description", "task", "args", "last_run_at",
                    "total_run_count")
        return super().get_readonly_fields(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is not None and service_of(obj.name):
            kwargs["form"] = ServiceTaskForm
        return super().get_form(request, obj, change=change, **kwargs)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and service_of(obj.name):
            return False
        return super().has_delete_permission(request, obj)
