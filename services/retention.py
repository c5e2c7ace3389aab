"""retention: the expiration setter, the expiration processor and the reaper (Prefect's three
services, one pass here), hourly by default.

For each workspace, with its `run_retention_days` (and the optional, shorter `log_retention_days`):

1. **set expiry**: finished runs that ended more than the retention ago get `expires_at` (their end
   plus the retention), past already, so the same UPDATE soft-deletes them (`deleted_at`): gone from
   every list and from the API at once;
2. **hide**: any other run past `expires_at` and still finished is soft-deleted;
3. **logs**: with a log retention, logs older than it of runs that finished before it are deleted;
4. **reap**: soft-deleted runs are deleted with their task runs, history and logs (runs/purge.py).

Bounded: each step handles at most RETENTION_BATCH_SIZE rows a batch and RETENTION_MAX_BATCHES
batches per workspace and pass; the rest waits for the next pass. Set-based: a batch is a fixed
few statements, each an index scan (the partial indexes flowrun_retention_due, flowrun_expired,
flowrun_soft_deleted, log_ws_time_id). Safe when two copies run at once: the setter and the hider
are conditional UPDATEs (a row already set is not matched again), the reaper's batches are picked
with SKIP LOCKED (runs/purge.py). One workspace's failure is logged and counted; the others go on.
"""

import logging
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Subquery

from runs.models import TERMINAL_STATES, FlowRun, Log, Workspace
from runs.purge import purge_batch
from services.registry import register

logger = logging.getLogger(__name__)
FINISHED = sorted(TERMINAL_STATES)


def _limits():
    return settings.ORCHESTRATOR["RETENTION_BATCH_SIZE"], settings.ORCHESTRATOR["RETENTION_MAX_BATCHES"]


def _in_batches(step, size, batches):
    """Run `step()` (which handles at most `size` rows and returns how many) until it handles fewer
    or `batches` ran, each in its own transaction; returns the total."""
    total = 0
    for _ in range(batches):
        with transaction.atomic():
            done = step()
        total += done
        if done < size:
            break
    return total


def set_expiry(workspace_id, run_days, now, size, batches):
    """Finished runs that ended before `now - run_days` get expires_at = end + run_days, which is
    past already: the same UPDATE hides them (deleted_at), since a second UPDATE of every row (the
    processor's) would cost as much again on a table with this many indexes. The processor step
    (`hide_expired`) still hides any run whose expiry came to pass otherwise."""
    due = FlowRun.objects.filter(workspace_id=workspace_id, state__in=FINISHED, expires_at__isnull=True,
                                 deleted_at__isnull=True, end_time__lt=now - timedelta(days=run_days))

    def step():
        return FlowRun.objects.filter(pk__in=Subquery(due.order_by().values("pk")[:size]),
                                      expires_at__isnull=True, deleted_at__isnull=True).update(
            expires_at=F("end_time") + timedelta(days=run_days), deleted_at=now)

    return _in_batches(step, size, batches)


def hide_expired(workspace_id, now, size, batches):
    """Runs past their expires_at, still finished (a retried run is not), are soft-deleted."""
    expired = FlowRun.objects.filter(workspace_id=workspace_id, expires_at__lte=now, deleted_at__isnull=True,
                                     state__in=FINISHED)

    def step():
        return FlowRun.objects.filter(pk__in=Subquery(expired.order_by().values("pk")[:size]),
                                      deleted_at__isnull=True, state__in=FINISHED).update(deleted_at=now)

    return _in_batches(step, size, batches)


def delete_old_logs(workspace_id, log_days, now, size, batches):
    """Logs written before `now - log_days` of runs that finished before it."""
    cutoff = now - timedelta(days=log_days)
    old = Log.objects.filter(workspace_id=workspace_id, timestamp__lt=cutoff, flow_run__state__in=FINISHED,
                             flow_run__end_time__lt=cutoff)

    def step():
        return Log.objects.filter(pk__in=Subquery(old.order_by().values("pk")[:size]))._raw_delete(Log.objects.db)

    return _in_batches(step, size, batches)


def reap(workspace_id, size, batches):
    """Soft-deleted runs of the workspace are deleted with everything under them; returns counts."""
    hidden = FlowRun.objects.filter(workspace_id=workspace_id, deleted_at__isnull=False)
    counts = Counter()
    for _ in range(batches):
        done = purge_batch(hidden, size)
        counts.update(done)
        if done["runs"] < size:
            break
    return counts


def retain_workspace(workspace, now):
    """One workspace's share of a pass: `workspace` is a dict of its id and retentions."""
    size, batches = _limits()
    counts = Counter()
    expired = set_expiry(workspace["pk"], workspace["run_retention_days"], now, size, batches)
    counts["runs_expiring"] = expired
    counts["runs_hidden"] = expired + hide_expired(workspace["pk"], now, size, batches)
    log_days = workspace["log_retention_days"]
    if log_days and log_days < workspace["run_retention_days"]:
        counts["logs_deleted"] = delete_old_logs(workspace["pk"], log_days, now, size, batches)
    reaped = reap(workspace["pk"], size, batches)
    counts["runs_deleted"], counts["rows_deleted"] = reaped["runs"], reaped["rows"]
    return counts


@register("retention", interval_setting="RETENTION_LOOP_SECONDS",
          description="Expires finished runs past their workspace's retention, hides them, then deletes them "
                      "with their task runs, history and logs; deletes logs past the log retention.")
def run_once(now):
    """A pass over every workspace; returns what it marked, hid and deleted."""
    totals = Counter(runs_expiring=0, runs_hidden=0, logs_deleted=0, runs_deleted=0, rows_deleted=0)
    failed = []
    for workspace in Workspace.objects.order_by("pk").values("pk", "run_retention_days", "log_retention_days"):
        try:
            totals.update(retain_workspace(workspace, now))
        except Exception:  # noqa: BLE001 (one workspace never stops a pass for the others)
            logger.exception("Retention failed for workspace %s; the others went on.", workspace["pk"])
            failed.append(workspace["pk"])
    return {**totals, "workspaces_failed": len(failed)}
