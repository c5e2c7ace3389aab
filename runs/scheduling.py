"""Turning schedules into runs: the future runs of active schedules, pause, resume, run now.

The admin, the API, the dashboard and the scheduler service all call these, so a schedule
behaves the same whichever door it was touched through.
"""

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from runs.models import (
    Actor,
    FlowRun,
    FlowVersion,
    Schedule,
    ScheduleStatus,
    State,
    StateChange,
    WorkQueue,
)

DEFAULT_QUEUE = "default"


def runs_ahead():
    return settings.ORCHESTRATOR["SCHEDULER_RUNS_AHEAD"]


def default_queues(workspace_ids):
    """The 'default' work queue of each workspace, created when missing: {workspace_id: queue}."""
    workspace_ids = set(workspace_ids)
    queues = {q.workspace_id: q for q in WorkQueue.objects.filter(workspace_id__in=workspace_ids, name=DEFAULT_QUEUE)}
    missing = workspace_ids - queues.keys()
    if missing:
        WorkQueue.objects.bulk_create(
            [WorkQueue(workspace_id=w, name=DEFAULT_QUEUE) for w in missing], ignore_conflicts=True
        )
        queues.update(
            {q.workspace_id: q for q in WorkQueue.objects.filter(workspace_id__in=missing, name=DEFAULT_QUEUE)}
        )
    return queues


def schedule_future_runs(schedules, now, count=None):
    """Make sure each ACTIVE schedule in `schedules` has its next `count` runs; returns how many were made.

    Set-based: a fixed number of queries whatever the number of schedules. Safe to run in
    parallel: the unique (flow, schedule slug, scheduled start) constraint plus an insert that
    ignores conflicts means two copies never create the same run twice, and no lock is held
    that a crash could leave behind. Never creates a run in the past.
    """
    count = runs_ahead() if count is None else count
    schedules = [s for s in schedules if s.status == ScheduleStatus.ACTIVE]
    if not schedules:
        return 0
    flow_ids = {s.flow_id for s in schedules}
    latest = dict(FlowVersion.objects.filter(flow_id__in=flow_ids, is_latest=True).values_list("flow_id", "id"))
    workspaces = {s.flow_id: s.flow.workspace_id for s in schedules}
    queues = default_queues(set(workspaces.values()))
    existing = set(
        FlowRun.objects.filter(
            flow_id__in=flow_ids, auto_scheduled=True, scheduled_start__gt=now,
            schedule_slug__in={s.slug for s in schedules},
        ).values_list("flow_id", "schedule_slug", "scheduled_start")
    )
    new_runs = []
    for schedule in schedules:
        for when in schedule.next_fire_times(now, count):
            if (schedule.flow_id, schedule.slug, when) in existing:
                continue
            new_runs.append(
                FlowRun(
                    workspace_id=workspaces[schedule.flow_id],
                    flow_id=schedule.flow_id,
                    flow_version_id=latest.get(schedule.flow_id),
                    schedule=schedule,
                    schedule_slug=schedule.slug,
                    name=f"{schedule.slug}-{when:%Y%m%d-%H%M%S}",
                    parameters=schedule.parameters,
                    state=State.SCHEDULED,
                    state_changed=now,
                    scheduled_start=when,
                    auto_scheduled=True,
                    work_queue_id=schedule.work_queue_id or queues[workspaces[schedule.flow_id]].id,
                    created=now,
                )
            )
    FlowRun.objects.bulk_create(new_runs, ignore_conflicts=True, batch_size=2000)
    return len(new_runs)


def future_runs_to_delete(schedule, now=None):
    """The runs a pause of `schedule` would delete: future, auto-scheduled, not started."""
    return FlowRun.objects.filter(schedule=schedule).future_auto_scheduled(now or timezone.now())


def pause_schedule(schedule, now=None):
    """Pause `schedule` and delete its future auto-scheduled runs that have not started.

    Runs already started and manual runs are left alone. Returns the number of runs deleted.
    """
    now = now or timezone.now()
    with transaction.atomic():
        Schedule.objects.filter(pk=schedule.pk).update(status=ScheduleStatus.PAUSED, updated=now)
        deleted, _ = future_runs_to_delete(schedule, now).delete()
    schedule.status = ScheduleStatus.PAUSED
    return deleted


def resume_schedule(schedule, now=None):
    """Make `schedule` ACTIVE and create its next runs at once; returns how many were made."""
    now = now or timezone.now()
    Schedule.objects.filter(pk=schedule.pk).update(status=ScheduleStatus.ACTIVE, updated=now)
    schedule.status = ScheduleStatus.ACTIVE
    return schedule_future_runs([schedule], now)


def create_manual_run(flow, *, user=None, parameters=None, work_queue=None, scheduled_start=None,
                      idempotency_key=None, schedule=None, name=""):
    """A run made by a person or a program ("run now"), recording who asked for it.

    With an `idempotency_key`, asking twice returns the first run instead of making a second
    (the unique (workspace, idempotency_key) constraint settles a race). Returns (run, created).
    """
    now = timezone.now()
    version = flow.latest_version
    if work_queue is None:
        work_queue = (schedule.work_queue if schedule else None) or default_queues([flow.workspace_id])[flow.workspace_id]
    merged = dict(version.parameters) if version else {}
    merged.update(schedule.parameters if schedule else {})
    merged.update(parameters or {})
    fields = dict(
        flow=flow, flow_version=version, schedule=schedule, name=name or f"{flow.name}-manual",
        parameters=merged, state=State.SCHEDULED, scheduled_start=scheduled_start or now,
        auto_scheduled=False, created_by=user, work_queue=work_queue, created=now, state_changed=now,
    )
    with transaction.atomic():
        if idempotency_key:
            run, created = FlowRun.objects.get_or_create(
                workspace_id=flow.workspace_id, idempotency_key=idempotency_key, defaults=fields
            )
        else:
            run, created = FlowRun.objects.create(workspace_id=flow.workspace_id, **fields), True
        if created:
            StateChange.objects.create(
                flow_run=run, to_state=State.SCHEDULED, actor=Actor.USER, user=user, timestamp=now,
                message=f"Created by {user}" if user else "Created through the API",
            )
    return run, created


def reschedule_after_edit(schedule, now=None):
    """After an edit: drop future not-started runs that no longer match, keep the rest, fill the gaps.

    Kept runs take the schedule's current parameters and queue. A paused schedule keeps none.
    """
    now = now or timezone.now()
    future = future_runs_to_delete(schedule, now)
    if schedule.status != ScheduleStatus.ACTIVE:
        future.delete()
        return 0
    wanted = schedule.next_fire_times(now, runs_ahead())
    with transaction.atomic():
        future.exclude(scheduled_start__in=wanted).delete()
        queue_id = schedule.work_queue_id or default_queues([schedule.flow.workspace_id])[schedule.flow.workspace_id].id
        future.update(parameters=schedule.parameters, work_queue_id=queue_id)
    return schedule_future_runs([schedule], now)
