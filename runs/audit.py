"""Writing the audit trail: who is acting, and a row per change with its before and after.

Callers are the actions layer (runs/actions.py) and the admin's save hooks; each writes its row
in the transaction of the change, so a change without its row (or a row without its change)
cannot happen. A secret's value is never part of a snapshot.
"""

import json
from dataclasses import dataclass

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from automations.models import Automation, Delivery
from events.models import IncomingWebhook
from runs import access
from runs.models import ApiKey, AuditEntry, Flow, Membership, Schedule, Secret, WorkQueue, Workspace

# The fields whose before/after an entry keeps, per audited model. Anything not listed (a key's
# hash, a secret's ciphertext) never enters the trail.
AUDITED_FIELDS = {
    Membership: ["user_id", "role"],
    ApiKey: ["name", "role", "user_id", "expires_at", "revoked_at", "prefix"],
    Workspace: ["name", "run_retention_days", "log_retention_days", "event_retention_days", "monthly_task_run_quota"],
    Flow: ["name", "description"],
    Schedule: ["flow_id", "slug", "kind", "status", "cron", "interval_seconds", "anchor", "rrule", "calendar",
               "timezone", "dst_nonexistent", "dst_ambiguous", "parameters", "work_queue_id", "catchup_max_runs",
               "only_newest_when_late", "description", "flow_version_id"],
    WorkQueue: ["name", "work_pool", "description", "concurrency_limit", "paused", "job_env"],
    Secret: ["name", "updated"],
    Automation: ["name", "description", "enabled", "trigger", "actions"],
    Delivery: ["status", "attempts", "next_attempt"],
    # Not the slug: the URL's secret part stays out of the trail (a rotation is its own entry).
    IncomingWebhook: ["name", "enabled", "secret_name", "template"],
}
TYPE_NAMES = {Membership: "membership", ApiKey: "api_key", Workspace: "workspace", Schedule: "schedule", Flow: "flow",
              WorkQueue: "work_queue", Secret: "secret", Automation: "automation", Delivery: "delivery",
              IncomingWebhook: "incoming_webhook"}


@dataclass(frozen=True)
class Who:
    """The actor of a change as the trail names it."""

    name: str
    user_id: int | None
    via: str

    @classmethod
    def of(cls, request, via):
        user = request.user
        return cls(getattr(user, "username", "") or str(user), getattr(user, "pk", None), via)

    @classmethod
    def command(cls, name):
        return cls(f"manage.py {name}", None, "cli")


def is_audited(model):
    return model in AUDITED_FIELDS


def snapshot(obj):
    """The audited fields of `obj` as JSON values (dates as ISO text, zones as names)."""
    fields = AUDITED_FIELDS[type(obj)]
    raw = {}
    for name in fields:
        if hasattr(obj, name):
            value = getattr(obj, name)
            raw[name] = str(value) if name == "timezone" and value is not None else value
    return json.loads(json.dumps(raw, cls=DjangoJSONEncoder, default=str))


def _entry(who, action, obj, before, after, now):
    return AuditEntry(
        workspace_id=access.workspace_id_of(obj), occurred=now or timezone.now(), actor=who.name[:200],
        actor_user_id=who.user_id, via=who.via, action=action, target_type=TYPE_NAMES[type(obj)],
        target_id=str(obj.pk or ""), target_name=str(obj)[:300], before=before, after=after,
    )


def record(who, action, obj, *, before=None, after=None, now=None):
    """Write one entry: `who` did `action` (e.g. "schedule.pause") to `obj`."""
    entry = _entry(who, action, obj, before, after, now)
    entry.save()
    return entry


def record_many(who, action, objs, *, before=lambda obj: None, after=lambda obj: None, now=None):
    """One entry per object of `objs`, in one INSERT; `before`/`after` are functions of the object."""
    return AuditEntry.objects.bulk_create([_entry(who, action, obj, before(obj), after(obj), now) for obj in objs])


# What the admin's generic add/change/delete is called per model, so that one change has one name
# whichever door it came through (the actions layer's names).
ADMIN_ACTION_NAMES = {
    Membership: {"create": "membership.add", "change": "membership.role", "delete": "membership.remove"},
    Workspace: {"change": "workspace.settings"},
}


def admin_action(model, verb):
    """The action name of the admin's `verb` (create, change, delete) on a row of `model`."""
    return ADMIN_ACTION_NAMES.get(model, {}).get(verb, f"{TYPE_NAMES[model]}.{verb}")


def changed(before, after):
    """Only the fields that differ, as (before, after); (None, None) when nothing did."""
    keys = [k for k in after if before.get(k) != after.get(k)]
    if not keys:
        return None, None
    return {k: before.get(k) for k in keys}, {k: after[k] for k in keys}
