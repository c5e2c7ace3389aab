"""deletion-jobs: background deletions whose worker died (or whose task the broker lost) go on.

A job's worker renews its lease with every batch (runs/deletion.py). A job still open whose lease
ran out gets a new holder here and is enqueued again; the new worker deletes what is left, and the
old one, should it wake up, finds its lease gone and stops. Safe when two copies run at once: the
hand-over is an UPDATE conditional on the old holder, so one copy takes each job.
"""

from runs import deletion
from services.registry import register


@register("deletion-jobs", interval_setting="DELETION_JOBS_LOOP_SECONDS",
          description="Re-enqueues background deletions whose worker stopped before finishing.")
def run_once(now):
    """Hand stale jobs to a new worker; returns how many."""
    from services.tasks import delete_in_background

    taken = deletion.take_over_stale(now)
    for job_id, holder in taken:
        delete_in_background.delay(str(job_id), str(holder))
    return {"jobs_resumed": len(taken)}
