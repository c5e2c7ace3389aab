"""The actions layer: every change to a workspace's setup that is not a run's state goes through
one function here, which makes the change and writes its audit entry in one transaction.

The API, the admin, the dashboard and the management commands call these; runs' states go
through runs/states.py instead. `who` is an runs.audit.Who (Who.of(request, "api")).
"""

from django.db import transaction
from django.utils import timezone

from events.emit import emit, make, resource
from runs import audit, deletion, scheduling
from runs.api.key_cache import forget_everything
from runs.models import ApiKey, Membership, Schedule, ScheduleStatus, WorkQueue
from runs.versions import repoint_waiting_runs


def _switch_event(obj, old, new, who, payload=None):
    """The event of a schedule's pause/resume or a queue's pause/resume, when `new` (the changed
    audited fields, as audit.changed gives them) says one happened; else None. Any way the switch is
    made (an action, an admin form, an automation) the event is the same."""
    if isinstance(obj, Schedule) and "status" in new:
        name = "schedule.paused" if new["status"] == ScheduleStatus.PAUSED else "schedule.resumed"
        return make(obj.flow.workspace_id, name, resource("schedule", obj.pk, obj.slug),
                    related=[resource("flow", obj.flow_id, obj.flow.name)],
                    payload={"by": who.name, "via": who.via, **(payload or {})})
    if isinstance(obj, WorkQueue) and "paused" in new:
        name = "work-queue.paused" if new["paused"] else "work-queue.resumed"
        return make(obj.workspace_id, name, resource("work-queue", obj.pk, obj.name),
                    payload={"by": who.name, "via": who.via})
    return None


def add_member(workspace, user, role, *, who):
    with transaction.atomic():
        membership = Membership.objects.create(workspace=workspace, user=user, role=role)
        audit.record(who, "membership.add", membership, after=audit.snapshot(membership))
    return membership


def change_role(membership, role, *, who):
    with transaction.atomic():
        before = audit.snapshot(membership)
        membership.role = role
        membership.save(update_fields=["role"])
        if before["role"] != role:
            audit.record(who, "membership.role", membership, before={"role": before["role"]}, after={"role": role})
    return membership


def remove_member(membership, *, who):
    with transaction.atomic():
        audit.record(who, "membership.remove", membership, before=audit.snapshot(membership))
        membership.delete()


def issue_key(workspace, *, name, role, user=None, expires_at=None, who):
    """A new API key; returns (key, secret). Only the key's prefix enters the trail."""
    with transaction.atomic():
        key, secret = ApiKey.issue(workspace=workspace, name=name, role=role, user=user, expires_at=expires_at)
        audit.record(who, "api_key.issue", key, after=audit.snapshot(key))
    return key, secret


def revoke_keys(keys, *, who, now=None):
    """Revoke every key of `keys` (a queryset) not revoked yet; returns how many."""
    now = now or timezone.now()
    with transaction.atomic():
        revoking = list(keys.filter(revoked_at__isnull=True).select_for_update())
        ApiKey.objects.filter(pk__in=[k.pk for k in revoking]).update(revoked_at=now)
        audit.record_many(who, "api_key.revoke", revoking, before=lambda key: {"revoked_at": None},
                          after=lambda key: {"revoked_at": now.isoformat()}, now=now)
    # This process stops accepting them at once; the others within API_KEY_CACHE_SECONDS.
    forget_everything()
    return len(revoking)


def save_with_audit(save, *, who, action, before=None):
    """Run `save()` (which returns the saved object) and record `action` with the fields that
    changed. `before`: the audited fields as they were (None for a new object)."""
    with transaction.atomic():
        obj = save()
        after = audit.snapshot(obj)
        if before is None:
            audit.record(who, action, obj, after=after)
        else:
            old, new = audit.changed(before, after)
            if new:
                audit.record(who, action, obj, before=old, after=new)
                emit([_switch_event(obj, old, new, who)])
    return obj


def change_settings(workspace, changes, *, who):
    before = audit.snapshot(workspace)

    def save():
        for field, value in changes.items():
            setattr(workspace, field, value)
        workspace.save()
        return workspace

    return save_with_audit(save, who=who, action="workspace.settings", before=before)


# --- schedules -----------------------------------------------------------------------------------

def save_schedule(save, *, who, before=None):
    """Create (`before` None) or edit a schedule: `save()` saves and returns it; its future runs are
    rescheduled in the same transaction as the save and its entry (a rule whose runs cannot be
    made undoes all three)."""
    now = timezone.now()

    def save_and_reschedule():
        schedule = save()
        scheduling.reschedule_after_edit(schedule, now)
        return schedule

    action = "schedule.create" if before is None else "schedule.change"
    return save_with_audit(save_and_reschedule, who=who, action=action, before=before)


def delete_in_background(obj, *, who, now=None):
    """Delete a flow, a schedule with its runs, or a workspace: marked deleted at once (gone from
    every list, its schedules stopped, its waiting runs unclaimable), its rows deleted by a Celery
    task in batches (runs/deletion.py). Returns the DeletionJob; None when it was already deleted."""
    now = now or timezone.now()
    kind = deletion.target_of(obj)
    with transaction.atomic():
        before = audit.snapshot(obj)
        job = deletion.mark_deleted(obj, who=who, now=now)
        if job is None:
            return None
        audit.record(who, f"{kind}.delete", obj, before=before, after={"deletion_job": str(job.pk)}, now=now)
        deletion.enqueue(job)
    return job


def delete_flow(flow, *, who, now=None):
    """The flow with its versions, schedules, runs, task runs, history and logs (in the background)."""
    return delete_in_background(flow, who=who, now=now)


def delete_schedule(schedule, *, who, now=None):
    """The schedule with its runs (in the background); its future slots are free at once."""
    return delete_in_background(schedule, who=who, now=now)


def delete_workspace(workspace, *, who, now=None):
    """The workspace with everything in it (in the background); its API keys stop at once."""
    job = delete_in_background(workspace, who=who, now=now)
    forget_everything()  # this process at once; the others within API_KEY_CACHE_SECONDS
    return job


def pin_schedule(schedule, version, *, who):
    """Pin `schedule` to `version` (a FlowVersion of its flow, archived or not), or with None let it
    follow the latest again; its unclaimed runs are re-pointed in the same transaction. Records
    `schedule.pin` or `schedule.unpin` with the versions before and after; no change, no entry.
    Raises ValidationError naming `flow_version` for a version of another flow."""
    before = audit.snapshot(schedule)
    schedule.flow_version = version
    schedule.validate_pin()

    def save():
        schedule.save(update_fields=["flow_version", "updated"])
        repoint_waiting_runs(schedule)
        return schedule

    action = "schedule.pin" if version is not None else "schedule.unpin"
    return save_with_audit(save, who=who, action=action, before=before)


def _switch_schedule(schedule, switch, action, counted, *, who, now):
    """Run `switch(schedule, now)` (scheduling's pause or resume), which returns how many runs it
    deleted or made, and record `action` with that count as `counted` when the status changed. The
    row is locked while its status is read, so two switches at once record one."""
    with transaction.atomic():
        was = Schedule.objects.select_for_update().filter(pk=schedule.pk).values_list("status", flat=True).first()
        count = switch(schedule, now)
        if was != schedule.status:
            audit.record(who, action, schedule, before={"status": str(was)},
                         after={"status": str(schedule.status), counted: count}, now=now)
            emit([_switch_event(schedule, {"status": str(was)}, {"status": str(schedule.status)}, who,
                                payload={counted: count})])
    return count


def pause_schedule(schedule, *, who, now=None):
    """Pause; returns how many future runs were deleted. Pausing a paused schedule is no change and
    leaves no entry."""
    return _switch_schedule(schedule, scheduling.pause_schedule, "schedule.pause", "runs_deleted", who=who, now=now)


def resume_schedule(schedule, *, who, now=None):
    """Resume; returns how many runs were made (raises ScheduleComputeError and changes nothing).
    Resuming an active schedule is no change and leaves no entry."""
    return _switch_schedule(schedule, scheduling.resume_schedule, "schedule.resume", "runs_created", who=who, now=now)


# --- work queues ---------------------------------------------------------------------------------

def set_queue(queue, *, who, action, **fields):
    """Pause, resume or limit a queue (one UPDATE of `fields`), with its entry."""
    with transaction.atomic():
        before = audit.snapshot(queue)
        WorkQueue.objects.filter(pk=queue.pk).update(**fields)
        queue.refresh_from_db()
        old, new = audit.changed(before, audit.snapshot(queue))
        if new:
            audit.record(who, action, queue, before=old, after=new)
            emit([_switch_event(queue, old, new, who)])
    return queue


def ensure_queues(workspace, names, *, who):
    """The workspace's queues named `names`, creating the missing ones (an agent registering), each
    new one with its entry; safe when two agents register at once (the loser finds it made)."""
    existing = {q.name: q for q in WorkQueue.objects.filter(workspace=workspace, name__in=names)}
    for name in names:
        if name in existing:
            continue
        with transaction.atomic():
            queue, created = WorkQueue.objects.get_or_create(workspace=workspace, name=name)
            if created:
                audit.record(who, "work_queue.create", queue, after=audit.snapshot(queue))
        existing[name] = queue
    return [existing[name] for name in names]


def delete_queue(queue, *, who):
    with transaction.atomic():
        audit.record(who, "work_queue.delete", queue, before=audit.snapshot(queue))
        queue.delete()


# --- secrets (the value never enters the trail) -------------------------------------------------

def write_secret(secret, value, *, who, now=None):
    """Create `secret` (unsaved) or replace its value."""
    now = now or timezone.now()
    new = secret.pk is None
    with transaction.atomic():
        secret.set_value(value, who.name, now=now)
        if new:
            secret.created = now
            secret.save()
        else:
            secret.save(update_fields=["ciphertext", "updated", "updated_by"])
        audit.record(who, "secret.create" if new else "secret.change", secret, after={"name": secret.name},
                     now=now)
    return secret


def delete_secret(secret, *, who):
    with transaction.atomic():
        audit.record(who, "secret.delete", secret, before={"name": secret.name})
        secret.delete()
