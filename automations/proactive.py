"""automations-proactive: fires the proactive buckets whose deadline passed (nothing expected came).

Safe when two copies run at once: a bucket is taken by a conditional DELETE (its id and the
deadline it was read with) and only the copy whose DELETE removed the row fires it, once. An
event that moved the deadline meanwhile (a heartbeat) makes the DELETE remove nothing: the
bucket stays open. A pass fires at most AUTOMATIONS_PROACTIVE_BATCH_SIZE buckets, oldest
deadline first; it also clears buckets nothing will read again (of disabled automations, and
reactive windows older than the longest window a trigger may have), and the firings and finished
deliveries past their workspace's event retention (automations/retention.py).
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction

from automations import retention
from automations.engine import fire_silent_bucket
from automations.models import TriggerBucket
from automations.triggers import MAX_WITHIN_SECONDS
from services.registry import register

logger = logging.getLogger(__name__)


def _batch_size():
    return settings.ORCHESTRATOR["AUTOMATIONS_PROACTIVE_BATCH_SIZE"]


@register("automations-proactive", "AUTOMATIONS_PROACTIVE_LOOP_SECONDS",
          "Fires the automations whose expected event did not come in time (proactive triggers).")
def run_once(now):
    """Fire the due proactive buckets; returns how many fired and how many stale buckets went."""
    fired = sum(fire_due_bucket(bucket, now) for bucket in due_buckets(now))
    return {"buckets_fired": fired, "stale_buckets_deleted": _delete_stale(now), **retention.delete_expired(now)}


def due_buckets(now):
    """The buckets whose deadline passed (of enabled automations), oldest deadline first, bounded."""
    return list(TriggerBucket.objects.filter(deadline__lte=now, automation__enabled=True)
                .select_related("automation").order_by("deadline", "pk")[:_batch_size()])


def fire_due_bucket(bucket, now):
    """Take `bucket` as it was read and fire it; False when another copy took it first or an event
    moved its deadline since (the conditional DELETE removed nothing)."""
    try:
        with transaction.atomic():
            taken, _ = TriggerBucket.objects.filter(pk=bucket.pk, deadline=bucket.deadline).delete()
            if not taken:
                return False
            fire_silent_bucket(bucket, now)
            return True
    except Exception:
        # Its firing is lost with the savepoint; the bucket goes, or it would fail every pass.
        logger.exception("Proactive bucket %s of automation %s failed to fire; it is dropped.", bucket.pk,
                         bucket.automation_id)
        TriggerBucket.objects.filter(pk=bucket.pk, deadline=bucket.deadline).delete()
        return False


def _delete_stale(now):
    stale = (TriggerBucket.objects.filter(automation__enabled=False)
             | TriggerBucket.objects.filter(deadline__isnull=True, fired__isnull=True,
                                            opened__lt=now - timedelta(seconds=MAX_WITHIN_SECONDS)))
    ids = list(stale.order_by("pk").values_list("pk", flat=True)[:_batch_size()])
    if not ids:
        return 0
    return TriggerBucket.objects.filter(pk__in=ids).delete()[0]
