"""The actions layer of automations (runs/actions.py's pattern): creating, editing, enabling,
disabling and deleting an automation, each with its audit entry in the same transaction. The API,
the dashboard and the admin call these. (automations/actions.py is something else: what an
automation does when it fires.)

A trigger's buckets hold what it counted or waits for: a changed trigger, or a disabled
automation, starts from nothing, so their buckets go with the change.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from automations.actions import destinations_missing, validate_actions
from automations.models import Automation, TriggerBucket
from automations.triggers import validate_trigger
from runs import audit

EDITABLE = ("name", "description", "enabled", "trigger", "actions")
NO_DESTINATION = "Set a destination before enabling this automation: it has nowhere to send this."


def destination_problems(actions, enabled):
    """{field: [message]} for the actions still without a destination, when the automation is to be
    on: a disabled automation may wait for one (the "notify" default does), an enabled one may not."""
    if not enabled or not isinstance(actions, list):
        return {}  # an actions value that is not a list was refused by validate_actions already
    return {field: [NO_DESTINATION] for field in destinations_missing(actions)}


def clean(fields, workspace, instance=None):
    """`fields` with the trigger and actions validated (ValidationError names the field)."""
    cleaned, problems = dict(fields), {}
    if "trigger" in fields:
        try:
            cleaned["trigger"] = validate_trigger(fields["trigger"])
        except ValidationError as exc:
            problems.update(exc.message_dict)
    if "actions" in fields:
        try:
            cleaned["actions"] = validate_actions(fields["actions"], workspace)
        except ValidationError as exc:
            problems.update(exc.message_dict if hasattr(exc, "error_dict") else {"actions": exc.messages})
    if fields.get("enabled") and instance is not None and not instance.enabled and "actions" not in fields:
        # Turning it on in an edit re-checks what it would do, as set_enabled does.
        try:
            validate_actions(instance.actions, workspace)
        except ValidationError as exc:
            problems.update(exc.message_dict if hasattr(exc, "error_dict") else {"actions": exc.messages})
    enabled = fields.get("enabled", instance.enabled if instance is not None else True)
    actions = cleaned.get("actions", instance.actions if instance is not None else [])
    if any(field.startswith("actions") for field in problems):
        actions = []  # refused as they are: where they would send is not the question yet
    for field, messages in destination_problems(actions, enabled).items():
        problems.setdefault(field, []).extend(messages)
    name = fields.get("name")
    if name is not None:
        clash = Automation.objects.filter(workspace=workspace, name=name)
        if instance is not None:
            clash = clash.exclude(pk=instance.pk)
        if clash.exists():
            problems.setdefault("name", []).append(f"This workspace already has an automation named {name}.")
    if instance is None:
        limit = settings.ORCHESTRATOR["AUTOMATIONS_MAX_PER_WORKSPACE"]
        if Automation.objects.filter(workspace=workspace).count() >= limit:
            problems.setdefault("non_field_errors", []).append(
                f"A workspace has at most {limit} automations (ORCHESTRATOR_AUTOMATIONS_MAX_PER_WORKSPACE).")
    if problems:
        raise ValidationError(problems)
    return cleaned


def create_automation(workspace, fields, *, who, now=None):
    """A new automation from validated `fields`."""
    now = now or timezone.now()
    with transaction.atomic():
        automation = Automation.objects.create(
            workspace=workspace, created=now, updated=now, **{k: v for k, v in fields.items() if k in EDITABLE})
        audit.record(who, "automation.create", automation, after=audit.snapshot(automation), now=now)
    return automation


def change_automation(automation, fields, *, who, now=None):
    """Apply validated `fields`; the entry names only what changed."""
    now = now or timezone.now()
    with transaction.atomic():
        before = audit.snapshot(automation)
        for name, value in fields.items():
            if name in EDITABLE:
                setattr(automation, name, value)
        automation.updated = now
        automation.save()
        old, new = audit.changed(before, audit.snapshot(automation))
        if new:
            audit.record(who, "automation.change", automation, before=old, after=new, now=now)
            if "trigger" in new or not automation.enabled:
                TriggerBucket.objects.filter(automation=automation).delete()
    return automation


def set_enabled(automation, enabled, *, who, now=None):
    """Enable or disable; returns whether it changed. Enabling re-checks the trigger and actions
    (a default made without a destination is refused until it has one). Two switches at once
    record one entry: the UPDATE is conditional on the old value."""
    now = now or timezone.now()
    if enabled:
        validate_trigger(automation.trigger)
        validate_actions(automation.actions, automation.workspace)
        problems = destination_problems(automation.actions, True)
        if problems:
            raise ValidationError(problems)
    with transaction.atomic():
        changed = Automation.objects.filter(pk=automation.pk, enabled=not enabled).update(enabled=enabled,
                                                                                          updated=now)
        automation.enabled = enabled
        if changed:
            audit.record(who, "automation.enable" if enabled else "automation.disable", automation,
                         before={"enabled": not enabled}, after={"enabled": enabled}, now=now)
            if not enabled:
                TriggerBucket.objects.filter(automation=automation).delete()
    return bool(changed)


def delete_automation(automation, *, who, now=None):
    with transaction.atomic():
        audit.record(who, "automation.delete", automation, before=audit.snapshot(automation), now=now)
        automation.delete()
