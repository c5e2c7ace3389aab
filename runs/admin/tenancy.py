"""Accounts, workspaces, memberships and API keys."""

from django import forms
from django.contrib import admin, messages

from runs import access, actions, vault
from runs.audit import Who
from runs.models import Account, ApiKey, AuditEntry, Membership, Role, Secret, TaskRunUsage, Workspace

from .base import PlatformOnly, WorkspaceScopedAdmin, WorkspaceScopedForm, WrittenByTheSystem
from .lifecycle import DeletesInBackground


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
class WorkspaceAdmin(DeletesInBackground, WorkspaceScopedAdmin):
    list_display = ["name", "account", "slug", "run_retention_days", "log_retention_days", "event_retention_days",
                    "monthly_task_run_quota",
                    "created"]
    list_filter = ["account"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]

    def has_add_permission(self, request):
        return access.is_platform_admin(request.user)  # a new workspace has no admin to manage it yet

    def has_delete_permission(self, request, obj=None):
        # Like making one: a workspace's own admins manage what is in it, not whether it exists.
        return access.is_platform_admin(request.user)

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
        key, secret = actions.issue_key(obj.workspace, name=obj.name, role=obj.role, user=obj.user,
                                        expires_at=obj.expires_at, who=Who.of(request, "admin"))
        obj.pk, obj.prefix = key.pk, key.prefix
        self.message_user(request, f"The key's secret, shown this once: {secret}", messages.WARNING)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset):
        count = actions.revoke_keys(self.split_by_role(request, queryset, Role.ADMIN), who=Who.of(request, "admin"))
        self.message_user(request, f"Revoked {count} key(s).")


class SecretForm(WorkspaceScopedForm):
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

    def save_model(self, request, obj, form, change):
        self.check_may_write(request, obj)
        value = form.cleaned_data.get("value") if form is not None else None
        if value:
            obj.set_value(value, request.user.get_username())
        super().save_model(request, obj, form, change)  # scoped, re-checked, audited (never the value)


@admin.register(AuditEntry)
class AuditEntryAdmin(WrittenByTheSystem, WorkspaceScopedAdmin):
    """The audit trail, read-only: for the workspace's admins (runs/audit.py)."""

    list_display = ["occurred", "workspace", "actor", "via", "action", "target_name", "before", "after"]
    list_filter = ["via", "target_type", "workspace"]
    search_fields = ["actor", "action", "target_name"]
    date_hierarchy = "occurred"


@admin.register(TaskRunUsage)
class TaskRunUsageAdmin(WrittenByTheSystem, WorkspaceScopedAdmin):
    """The monthly quota's counters, read-only: written only by task runs completing (runs/quota.py). A
    month's count is the sum of its rows (shards); the dashboard's usage page shows it whole."""

    list_display = ["workspace", "month", "shard", "completed"]
    list_filter = ["workspace", "month"]
    ordering = ["-month", "workspace", "shard"]
