"""Background deletion: a flow, a schedule with its runs, or a workspace.

`mark_deleted` (the request; runs/actions.py calls it with its audit entry) marks the target
deleted in one short transaction, whatever its size: the target leaves every list (the models'
default managers skip deleted rows, run lists skip runs of deleted flows and schedules), its
schedules stop (the scheduler reads live schedules only), its runs waiting to be claimed are
soft-deleted so no agent can claim them, and a DeletionJob is made. After the commit a Celery task
(`services.tasks.delete_in_background`) runs `run_job`: it deletes the runs in batches with
everything under them (runs/purge.py, shared with the retention reaper), then the target itself.

Each batch commits with the job's progress, under the worker's lease (`holder`); a worker that
lost its lease (another took over) stops at its next batch. A worker killed mid-way leaves its
lease to run out; the deletion-jobs service (services/deletion_jobs.py) then gives the job a new
holder and enqueues it again, and the new worker goes on with what is left.
"""

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from runs.models import (
    CLAIMABLE_STATES,
    ApiKey,
    DeletionJob,
    DeletionState,
    DeletionTarget,
    Flow,
    FlowRun,
    Schedule,
    Workspace,
)
from runs.purge import purge_batch

logger = logging.getLogger(__name__)
OPEN = (DeletionState.PENDING, DeletionState.RUNNING)
# A job that failed this many times in a row is left FAILED with its error for a person to read.
MAX_ATTEMPTS = 5


class LeaseLost(Exception):
    """Another worker holds the job now: this one stops, its last batch undone."""


def _lease(now):
    return now + timedelta(seconds=settings.ORCHESTRATOR["DELETION_LEASE_SECONDS"])


def target_of(obj):
    if isinstance(obj, Flow):
        return DeletionTarget.FLOW
    if isinstance(obj, Schedule):
        return DeletionTarget.SCHEDULE
    if isinstance(obj, Workspace):
        return DeletionTarget.WORKSPACE
    raise TypeError(f"Cannot delete a {type(obj).__name__} in the background.")


def _workspace_of(obj):
    if isinstance(obj, Workspace):
        return obj
    flow = obj if isinstance(obj, Flow) else obj.flow
    return flow.workspace


def mark_deleted(obj, *, who, now):
    """Mark `obj` (a Flow, a Schedule or a Workspace) deleted and make its job; returns the job.
    Call inside the caller's transaction; enqueue the job after it commits (`enqueue`)."""
    kind = target_of(obj)
    workspace = _workspace_of(obj)
    model = type(obj)
    # Conditional: a second request (or a double click) finds it deleted and makes no second job.
    if not model.all_objects.filter(pk=obj.pk, deleted_at__isnull=True).update(deleted_at=now):
        return None
    obj.deleted_at = now
    if kind == DeletionTarget.FLOW:
        Schedule.all_objects.filter(flow_id=obj.pk, deleted_at__isnull=True).update(deleted_at=now)
        waiting = FlowRun.objects.filter(flow_id=obj.pk)
    elif kind == DeletionTarget.SCHEDULE:
        from runs.scheduling import future_runs_to_delete

        # Its future slots are freed now (a schedule re-created with this slug makes them again);
        # they are at most a few per schedule.
        future_runs_to_delete(obj, now).filter(schedule_id=obj.pk).delete()
        waiting = FlowRun.objects.filter(schedule_id=obj.pk)
    else:
        Flow.all_objects.filter(workspace_id=obj.pk, deleted_at__isnull=True).update(deleted_at=now)
        Schedule.all_objects.filter(flow__workspace_id=obj.pk, deleted_at__isnull=True).update(deleted_at=now)
        ApiKey.objects.filter(workspace_id=obj.pk, revoked_at__isnull=True).update(revoked_at=now)
        waiting = FlowRun.objects.filter(workspace_id=obj.pk)
    # No agent may claim them from now on (claims read alive runs only).
    waiting.filter(state__in=CLAIMABLE_STATES, deleted_at__isnull=True).update(deleted_at=now)
    return DeletionJob.objects.create(
        workspace=workspace, workspace_name=str(workspace)[:300], target_type=kind, target_id=str(obj.pk),
        target_name=str(obj)[:300], requested_by=who.name[:200], requested_by_user_id=who.user_id, via=who.via,
        holder=uuid.uuid4(), lease_expires_at=_lease(now), created=now,
    )


def enqueue(job):
    """After the commit, hand `job` to a Celery worker. When the broker cannot take it, the job
    waits for the deletion-jobs service (its lease runs out, the service enqueues it again)."""
    from services.tasks import delete_in_background

    def send():
        try:
            delete_in_background.delay(str(job.pk), str(job.holder))
        except Exception:  # noqa: BLE001 (degrade: the request succeeded, the service retries)
            logger.exception("Could not enqueue deletion job %s; the deletion-jobs service will.", job.pk)

    transaction.on_commit(send)


def runs_of(job):
    """The runs `job` deletes."""
    field = {DeletionTarget.FLOW: "flow_id", DeletionTarget.SCHEDULE: "schedule_id",
             DeletionTarget.WORKSPACE: "workspace_id"}[job.target_type]
    return FlowRun.objects.filter(**{field: job.target_id})


def _delete_target(job):
    """Once its runs are gone: the target's own rows. Returns how many rows."""
    if job.target_type == DeletionTarget.SCHEDULE:
        return Schedule.all_objects.filter(pk=job.target_id).delete()[0]
    if job.target_type == DeletionTarget.FLOW:
        return Flow.all_objects.filter(pk=job.target_id).delete()[0]
    from events.models import Event

    # The events first, in batches (a plain DELETE each; the table's cascade would take them all
    # in one statement). The rest of a workspace (queues, agents, keys, members, automations,
    # audit entries) is small beside its runs: the ORM's delete takes it.
    deleted = 0
    size = settings.ORCHESTRATOR["DELETION_BATCH_SIZE"]
    while True:
        with transaction.atomic():
            batch = Event.objects.filter(workspace_id=job.target_id).order_by().values("pk")[:size]
            done = Event.objects.filter(pk__in=batch)._raw_delete(Event.objects.db)
        deleted += done
        if done < size:
            break
    return deleted + Workspace.all_objects.filter(pk=job.target_id).delete()[0]


def _progress(job_id, holder, now, **changes):
    """Record progress under the lease; raises LeaseLost when another worker holds the job."""
    if not DeletionJob.objects.filter(pk=job_id, holder=holder, state__in=OPEN).update(
            lease_expires_at=_lease(now), **changes):
        raise LeaseLost()


def run_job(job_id, holder, *, now=timezone.now, batch_size=None):
    """Delete what job `job_id` names, in batches, as long as `holder` holds it; returns the job
    (None when another worker holds it or it is finished). `now` is a clock (tests pass their own)."""
    size = batch_size or settings.ORCHESTRATOR["DELETION_BATCH_SIZE"]
    started = now()
    if not DeletionJob.objects.filter(pk=job_id, holder=holder, state__in=OPEN).update(
            state=DeletionState.RUNNING, started=Coalesce(F("started"), started), attempts=F("attempts") + 1,
            lease_expires_at=_lease(started)):
        return None
    job = DeletionJob.objects.get(pk=job_id)
    runs = runs_of(job)
    try:
        while True:
            with transaction.atomic():
                done = purge_batch(runs, size)
                _progress(job_id, holder, now(), runs_deleted=F("runs_deleted") + done["runs"],
                          rows_deleted=F("rows_deleted") + done["rows"])
            if done["runs"] == 0 and not runs.exists():
                break
        with transaction.atomic():
            rows = _delete_target(job)
            _progress(job_id, holder, now(), rows_deleted=F("rows_deleted") + rows, state=DeletionState.DONE,
                      finished=now(), error="")
    except LeaseLost:
        logger.warning("Deletion job %s is held by another worker now; this one stops.", job_id)
        return None
    except Exception as exc:  # noqa: BLE001 (recorded on the job; retried by the service, up to MAX_ATTEMPTS)
        logger.exception("Deletion job %s failed.", job_id)
        job.refresh_from_db()
        failed = job.attempts >= MAX_ATTEMPTS
        DeletionJob.objects.filter(pk=job_id, holder=holder).update(
            error=f"{type(exc).__name__}: {exc}"[:2000], lease_expires_at=now(),
            **({"state": DeletionState.FAILED, "finished": now()} if failed else {}))
    job.refresh_from_db()
    return job


def take_over_stale(now, limit=100):
    """Give jobs whose lease ran out (their worker died, or the broker lost the task) a new holder;
    returns [(job id, new holder)] to enqueue. Conditional on the old holder: two copies of the
    service never both take one job."""
    taken = []
    stale = DeletionJob.objects.filter(state__in=OPEN, lease_expires_at__lt=now).order_by("lease_expires_at")
    for job_id, old in stale.values_list("pk", "holder")[:limit]:
        new = uuid.uuid4()
        if DeletionJob.objects.filter(pk=job_id, holder=old, state__in=OPEN, lease_expires_at__lt=now).update(
                holder=new, lease_expires_at=_lease(now)):
            taken.append((job_id, new))
    return taken
