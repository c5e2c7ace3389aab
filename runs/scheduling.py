"""Turning schedules into runs: the future runs of active schedules, pause, resume, run now.

The admin, the API, the dashboard and the scheduler service all call these, so a schedule
behaves the same whichever door it was touched through.
"""

from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, Max, OuterRef, Q
from django.utils import timezone

from runs import hot_sql
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
from runs.scheduled_runs import ScheduledRunWriter, missed_fire_times
from runs.schedules import evaluating
from runs.states import transition_flow_runs
from runs.versions import repoint_waiting_runs

DEFAULT_QUEUE = "default"
# How many recently edited schedules one scheduler pass re-checks for runs of an old definition.
EDIT_RECHECK_LIMIT = 200


def runs_ahead():
    return settings.ORCHESTRATOR["SCHEDULER_RUNS_AHEAD"]


@dataclass
class SkippedSchedule:
    """A schedule a scheduler pass left out because its fire times could not be computed."""

    schedule: Schedule
    step: str  # what the pass was doing, in words
    error: Exception


def _skip(failures, schedule, step, exc):
    """In a scheduler pass (`failures` is its {schedule id: SkippedSchedule}), note `schedule` as
    skipped; elsewhere (a request saving one schedule) let the error go to the caller."""
    if failures is None:
        raise exc
    failures.setdefault(schedule.pk, SkippedSchedule(schedule, step, exc))


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


def schedule_future_runs(schedules, now, count=None, failures=None):
    """Make sure each ACTIVE schedule in `schedules` has its next `count` runs; returns how many were made.

    Set-based: a fixed number of queries whatever the number of schedules. Safe to run in
    parallel: the unique (flow, schedule slug, slot) constraint plus an insert that
    ignores conflicts means two copies never create the same run twice, and no lock is held
    that a crash could leave behind. Never creates a run in the past, except the missed runs a
    schedule's catch-up setting asks for (see `catch_up_since`).

    A schedule whose times cannot be computed (ScheduleComputeError: its rule fails, or costs more
    than the time budget) raises, unless `failures` is given (a scheduler pass): then it is
    recorded there and skipped, and the others get their runs. Schedules already in `failures`
    are skipped too.
    """
    count = runs_ahead() if count is None else count
    schedules = [s for s in schedules if s.status == ScheduleStatus.ACTIVE]
    if not schedules or count <= 0:
        return 0
    # Schedules that already have their `count` future runs cost nothing more than this one
    # aggregate: the second pass right after the first reads it and stops.
    future = _future_run_counts(schedules, now)
    short = [s for s in schedules if future.get((s.flow_id, s.slug), 0) < count]
    if not short:
        return 0
    flow_ids = {s.flow_id for s in short}
    latest = dict(FlowVersion.objects.filter(flow_id__in=flow_ids, is_latest=True).values_list("flow_id", "id"))
    workspaces = {s.flow_id: s.flow.workspace_id for s in short}
    queues = default_queues({workspaces[s.flow_id] for s in short if s.work_queue_id is None})
    since = catch_up_since([s for s in short if s.catchup_max_runs], now)
    writer = ScheduledRunWriter(now)
    for schedule in short:
        if failures is not None and schedule.pk in failures:
            continue
        try:
            # One time budget for the schedule's next and missed times together.
            with evaluating(schedule, "its next and missed runs"):
                times = schedule.next_fire_times(now, count)
                if schedule.catchup_max_runs:
                    times = missed_fire_times(schedule, since[schedule.pk], now, schedule.catchup_max_runs) + times
        except Exception as exc:  # noqa: BLE001 (one schedule never stops a pass for the others)
            _skip(failures, schedule, "making its next runs", exc)
            continue
        workspace_id = workspaces[schedule.flow_id]
        # Made with the version it would run if claimed now; the claim decides (runs/versions.py).
        writer.add(schedule, workspace_id=workspace_id,
                   flow_version_id=schedule.flow_version_id or latest.get(schedule.flow_id),
                   work_queue_id=schedule.work_queue_id or queues[workspace_id].id, times=times)
    return writer.insert()


def _future_run_counts(schedules, now):
    """{(flow_id, slug): number of future auto-scheduled runs}, in one query."""
    # A run due in the future was never rescheduled (that makes it due now), so its due time is
    # its slot, and the (flow, scheduled_start) index serves this read.
    future = FlowRun.objects.filter(auto_scheduled=True, scheduled_start__gt=now)
    # A short list is looked up by flow; the service's pass over every schedule reads all future
    # runs, which an IN list of thousands of ids would only slow down.
    if len(schedules) <= 500:
        future = future.filter(flow_id__in={s.flow_id for s in schedules})
    rows = future.values_list("flow_id", "schedule_slug").annotate(n=Count("id")).order_by()
    return {(flow_id, slug): n for flow_id, slug, n in rows}


def catch_up_since(schedules, now):
    """{schedule id: the instant after which fire times count as missed}, in one query.

    A fire time is missed when it is after the schedule's latest auto-scheduled run (whatever
    that run's state) and not after `now`. A schedule that never had a run misses nothing from
    before it was created: catch-up never back-fills history the schedule did not live through.
    """
    if not schedules:
        return {}
    rows = (
        FlowRun.objects.filter(auto_scheduled=True, flow_id__in={s.flow_id for s in schedules},
                               schedule_slug__in={s.slug for s in schedules}, slot__lte=now)
        .values_list("flow_id", "schedule_slug").annotate(last=Max("slot")).order_by()
    )
    latest = {(flow_id, slug): last for flow_id, slug, last in rows}
    return {s.pk: max(latest.get((s.flow_id, s.slug), s.created), s.created) for s in schedules}


def cancel_superseded_late_runs(now):
    """For schedules that run only the newest when late: cancel the older overdue runs.

    An overdue run is auto-scheduled, SCHEDULED or LATE, not started, and due at or before `now`.
    Of a schedule's overdue runs only the newest is kept; the older ones are cancelled through
    the state machine (actor: scheduler) with a message saying why. Set-based.
    """
    overdue = FlowRun.objects.filter(
        auto_scheduled=True, state__in=[State.SCHEDULED, State.LATE], start_time__isnull=True,
        scheduled_start__lte=now, deleted_at__isnull=True,
    )
    newer = overdue.filter(flow_id=OuterRef("flow_id"), schedule_slug=OuterRef("schedule_slug"),
                           slot__gt=OuterRef("slot"))
    superseded = overdue.filter(schedule__only_newest_when_late=True).filter(Exists(newer))

    def why(row):
        return (f"Cancelled by the scheduler: schedule '{row['schedule_slug']}' runs only the newest of its "
                f"late runs, and a newer one is due; this one was due at {row['slot']:%Y-%m-%d %H:%M:%S} UTC.")

    return transition_flow_runs(superseded, State.CANCELLED, actor=Actor.SCHEDULER, message=why, now=now,
                                extra_fields=("schedule_slug", "slot"))


def future_runs_to_delete(schedule, now=None):
    """The runs a pause of `schedule` would delete: future, auto-scheduled, not started.

    Matched by (flow, schedule slug), the identity of an auto-scheduled run, so the runs of a
    deleted and re-created schedule with the same slug are its runs too.
    """
    runs = FlowRun.objects.filter(flow_id=schedule.flow_id, schedule_slug=schedule.slug)
    return runs.future_auto_scheduled(now or timezone.now())


def runs_that_stay(schedule, now=None):
    """What a pause of `schedule` leaves alone, counted in one query: {"running": started runs
    (SUBMITTED, RUNNING, PAUSED, CANCELLING: they finish), "manual": runs a person or program made
    for it that wait, "due": auto-scheduled runs already due or LATE (an agent may be claiming them)}.
    """
    now = now or timezone.now()
    mine = FlowRun.objects.filter(Q(schedule_id=schedule.pk) | Q(flow_id=schedule.flow_id,
                                                                  schedule_slug=schedule.slug))
    waiting = [State.SCHEDULED, State.LATE]
    return mine.aggregate(
        running=Count("pk", filter=Q(state__in=[State.SUBMITTED, State.RUNNING, State.PAUSED, State.CANCELLING])),
        manual=Count("pk", filter=Q(auto_scheduled=False, state__in=waiting)),
        due=Count("pk", filter=Q(auto_scheduled=True, state__in=waiting) & (
            Q(state=State.LATE) | Q(scheduled_start__lte=now) | Q(start_time__isnull=False))),
    )


def delete_runs_of_paused_schedules(now):
    """Delete future not-started auto-scheduled runs of PAUSED schedules; returns how many.

    Closes the race of a pause landing while a scheduler pass that still saw the schedule
    ACTIVE was inserting its runs: the next pass removes what that insert left behind.
    """
    stale = FlowRun.objects.filter(schedule__status=ScheduleStatus.PAUSED).future_auto_scheduled(now)
    deleted, _ = stale.delete()
    return deleted


def delete_stale_runs_of_edited_schedules(schedules, now, edited_since, failures=None):
    """Delete future not-started runs that no longer match schedules edited after `edited_since`.

    An edit already replaces its stale runs in its own request; this closes the race of a pass
    that read the schedule before the edit and inserted runs of the old definition after it.
    One query whatever the number of schedules; returns how many runs were deleted. A schedule
    whose times cannot be computed keeps its runs and, given `failures`, is recorded there
    (see `schedule_future_runs`).
    """
    edited = sorted((s for s in schedules if s.updated >= edited_since), key=lambda s: s.updated, reverse=True)
    # Bounded work per pass, newest edits first: a bulk import of thousands of schedules must not
    # turn one pass into thousands of fire-time computations and one giant statement.
    edited = edited[:EDIT_RECHECK_LIMIT]
    if not edited:
        return 0
    matching, checked = Q(pk__in=[]), []
    for schedule in edited:
        try:
            wanted = schedule.next_fire_times(now, runs_ahead())
        except Exception as exc:  # noqa: BLE001 (one schedule never stops a pass for the others)
            _skip(failures, schedule, "checking its runs after an edit", exc)
            continue
        matching |= Q(schedule_id=schedule.pk, schedule_slug=schedule.slug, scheduled_start__in=wanted)
        checked.append(schedule.pk)
    if not checked:
        return 0
    stale = FlowRun.objects.filter(schedule_id__in=checked).future_auto_scheduled(now)
    deleted, _ = stale.exclude(matching).delete()
    return deleted


def delete_schedule(schedule, now=None):
    """Delete `schedule` with its future not-started auto-scheduled runs; past and manual runs stay."""
    now = now or timezone.now()
    with transaction.atomic():
        deleted, _ = future_runs_to_delete(schedule, now).delete()
        schedule.delete()
    return deleted


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
    """Make `schedule` ACTIVE and create its next runs at once; returns how many were made.

    One transaction: when its runs cannot be made (ScheduleComputeError, e.g. a rule saved before
    validation refused it), the schedule stays PAUSED and the error goes to the caller.
    """
    now = now or timezone.now()
    previous = schedule.status
    try:
        with transaction.atomic():
            Schedule.objects.filter(pk=schedule.pk).update(status=ScheduleStatus.ACTIVE, updated=now)
            schedule.status = ScheduleStatus.ACTIVE
            return schedule_future_runs([schedule], now)
    except BaseException:
        schedule.status = previous
        raise


# create_manual_run's `version` when the caller has not read it: the schedule's pin, else the flow's latest.
LATEST = object()


def manual_run_name(flow):
    """`<flow>-manual`, the flow's name cut so that the whole fits a run's name (a flow's name may
    take all of its 200 characters)."""
    suffix = "-manual"
    return f"{flow.name[:FlowRun._meta.get_field('name').max_length - len(suffix)]}{suffix}"


def create_manual_run(flow, *, user=None, api_key=None, parameters=None, work_queue=None, scheduled_start=None,
                      idempotency_key=None, schedule=None, name="", actor=Actor.USER, message=None, version=LATEST):
    """A run made by a person or a program ("run now"), recording who asked for it: the person,
    the API key it came with, or both (a person's own key); or another `actor` (an automation)
    with its own history `message`. A caller that read the version the run runs (the API's create
    reads it with the flow) passes it as `version` (None: the flow has none).

    With an `idempotency_key`, asking twice returns the first run instead of making a second
    (the unique (workspace, idempotency_key) constraint settles a race). Returns (run, created).
    """
    now = timezone.now()
    if version is LATEST:
        # A run of a pinned schedule runs the pinned version; any other, the latest (see runs/versions.py).
        version = schedule.flow_version if schedule is not None and schedule.flow_version_id else flow.latest_version
    if work_queue is None:
        work_queue = (schedule.work_queue if schedule else None) or default_queues([flow.workspace_id])[flow.workspace_id]
    merged = dict(version.parameters) if version else {}
    merged.update(schedule.parameters if schedule else {})
    merged.update(parameters or {})
    run = FlowRun(
        workspace_id=flow.workspace_id, idempotency_key=idempotency_key or None,  # "": no key, as None
        flow=flow, flow_version=version, schedule=schedule, name=name or manual_run_name(flow),
        parameters=merged, state=State.SCHEDULED, scheduled_start=scheduled_start or now,
        auto_scheduled=False, created_by=user, created_by_key=api_key, work_queue=work_queue, created=now,
        state_changed=now,
    )
    history = StateChange(flow_run=run, to_state=State.SCHEDULED, actor=actor, user=user, timestamp=now,
                          message=message or created_message(user, api_key))
    # Run and history in one statement that does nothing when the key is taken (runs/hot_sql.py),
    # not get_or_create's SELECT, SAVEPOINT, INSERT and RELEASE and a second INSERT in a transaction.
    if hot_sql.insert_manual_run(run, history):
        return run, True
    # The key's run, made earlier or by a request that raced this one (its INSERT committed before ours
    # went on). Gone since (a purge between the two statements): the conflict, as get_or_create's.
    existing = FlowRun.objects.filter(workspace_id=flow.workspace_id, idempotency_key=idempotency_key).first()
    if existing is None:
        raise IntegrityError(f"The run of idempotency key {idempotency_key!r} was deleted while it was read.")
    return existing, False


def created_message(user, api_key):
    """The history line of a manual run's creation."""
    if user and api_key:
        return f"Created by {user} with API key {api_key.name}"
    if user:
        return f"Created by {user}"
    return f"Created with API key {api_key.name}" if api_key else "Created through the API"


def reschedule_after_edit(schedule, now=None):
    """After an edit: drop future not-started runs that no longer match, keep the rest, fill the gaps.

    Kept runs take the schedule's current parameters and queue, and its unclaimed runs the version
    it runs now (pinned, or the latest). A paused schedule keeps none.
    One transaction, and the fire times are computed before anything is written: when they cannot
    be (ScheduleComputeError), nothing changes. Callers that save the schedule first do so in the
    same transaction (`transaction.atomic()` around both), so the edit is undone with it.
    """
    now = now or timezone.now()
    future = future_runs_to_delete(schedule, now)
    with transaction.atomic():
        if schedule.status != ScheduleStatus.ACTIVE:
            future.delete()
            return 0
        wanted = schedule.next_fire_times(now, runs_ahead())
        future.exclude(scheduled_start__in=wanted).delete()
        # A renamed schedule's runs under its old slug no longer belong to it.
        FlowRun.objects.filter(schedule=schedule).exclude(schedule_slug=schedule.slug).future_auto_scheduled(now).delete()
        queue_id = schedule.work_queue_id or default_queues([schedule.flow.workspace_id])[schedule.flow.workspace_id].id
        # Kept runs follow the edit, and a re-created schedule adopts the runs of its slug.
        future.update(parameters=schedule.parameters, work_queue_id=queue_id, schedule=schedule)
        # A pin or unpin reaches the runs waiting for an agent, late ones included.
        repoint_waiting_runs(schedule)
        return schedule_future_runs([schedule], now)
