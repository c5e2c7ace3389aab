"""What the model admins share: scoping to the user's workspaces (runs/access.py decides), the
platform-only rule for rows outside workspaces, read-only inlines, and ages."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db import transaction
from django.utils import timezone

from runs import access, actions, audit
from runs.audit import Who
from runs.models import Role


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
        if not audit.is_audited(type(obj)):
            return super().save_model(request, obj, form, change)
        # Audited models: the save and its entry in one transaction (runs/actions.py).
        before = audit.snapshot(type(obj).objects.get(pk=obj.pk)) if change else None

        def save():
            super(WorkspaceScopedAdmin, self).save_model(request, obj, form, change)
            return obj

        actions.save_with_audit(save, who=Who.of(request, "admin"), before=before,
                                action=audit.admin_action(type(obj), "change" if change else "create"))

    def delete_model(self, request, obj):
        with transaction.atomic():
            if audit.is_audited(type(obj)):
                audit.record(Who.of(request, "admin"), audit.admin_action(type(obj), "delete"), obj,
                             before=audit.snapshot(obj))
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        # Django's delete_selected runs outside a transaction: the entries go with the deletion or not at all.
        with transaction.atomic():
            if audit.is_audited(queryset.model):
                audit.record_many(Who.of(request, "admin"), audit.admin_action(queryset.model, "delete"),
                                  list(queryset), before=audit.snapshot)
            super().delete_queryset(request, queryset)

    def save_formset(self, request, form, formset, change):
        if not audit.is_audited(formset.model):
            return super().save_formset(request, form, formset, change)
        who, model = Who.of(request, "admin"), formset.model
        before = {obj.pk: audit.snapshot(obj) for obj in model.objects.filter(
            pk__in=[f.instance.pk for f in formset.initial_forms if f.instance.pk])}
        # Removed rows are recorded while they still have their ids (the view's transaction holds both).
        doomed = [f.instance for f in formset.deleted_forms if f.instance.pk]
        audit.record_many(who, audit.admin_action(model, "delete"), doomed, before=lambda obj: before[obj.pk])
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            audit.record(who, audit.admin_action(model, "create"), obj, after=audit.snapshot(obj))
        for obj, _ in formset.changed_objects:
            old, new = audit.changed(before.get(obj.pk, {}), audit.snapshot(obj))
            if new:
                audit.record(who, audit.admin_action(model, "change"), obj, before=old, after=new)

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


class WrittenByTheSystem:
    """For a ModelAdmin of records the system writes (a log, counters, jobs, the audit trail):
    listed and read, never added, changed or deleted by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


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


def age(moment, now=None):
    """'42 s ago' style age of a datetime, or a dash."""
    if moment is None:
        return "—"
    seconds = int(((now or timezone.now()) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"
