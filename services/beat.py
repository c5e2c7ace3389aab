"""Beat's rows follow the environment: each service's PeriodicTask takes its interval from settings.

One source of truth per setting (DESIGN.md): a service's interval is its `ORCHESTRATOR_…_LOOP_SECONDS`
variable, applied on every beat start (`beat_scheduler.ServiceScheduler`, before beat reads its schedule)
and after every `migrate` (post_migrate, see apps.py). The row keeps one admin switch, `enabled`, which
is never touched here. Safe when two beats start at once: the work is one transaction under a lock.
"""

import hashlib
import json
import logging

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from services import registry

logger = logging.getLogger(__name__)

PERIODIC_TASK_PREFIX = "service: "
TASK = "services.run_service"
# A signed 64-bit key for pg_advisory_xact_lock (Python's hash() changes between processes).
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"services:apply_service_intervals").digest()[:8], "big", signed=True)


def periodic_task_name(service_name):
    return PERIODIC_TASK_PREFIX + service_name


def service_of(periodic_task_name_):
    """The registered service a PeriodicTask row runs, or None for any other row."""
    if not periodic_task_name_.startswith(PERIODIC_TASK_PREFIX):
        return None
    return registry.all_services().get(periodic_task_name_[len(PERIODIC_TASK_PREFIX):])


def _serialize(using):
    # Two beats starting at once would otherwise both create a missing row or interval. SQLite
    # needs nothing: its transactions here are IMMEDIATE, so writers already take turns.
    if connections[using].vendor == "postgresql":
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


def apply_service_intervals(now=None, *, apps=global_apps, using=DEFAULT_DB_ALIAS):
    """Give every service a PeriodicTask with the interval of its setting; returns the names changed.

    Creates missing rows (enabled), re-points rows whose interval, task or arguments differ, leaves
    `enabled` alone. Records when each service was first expected to run (`ServiceSchedule`), which
    Towel's health verdict counts from. Tells running beats to reload when a row changed.
    `apps` may be a migration state's (post_migrate), so only plain model methods are used.
    """
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    ServiceSchedule = apps.get_model("services", "ServiceSchedule")
    services = registry.all_services()
    now = now or timezone.now()
    changed = []
    with transaction.atomic(using=using):
        _serialize(using)
        intervals = {}
        for seconds in sorted({s.interval_seconds for s in services.values()}):
            # IntervalSchedule has no unique key, and admins may have added twins: the oldest wins.
            intervals[seconds] = (
                IntervalSchedule.objects.using(using).filter(every=seconds, period="seconds").order_by("pk").first()
                or IntervalSchedule.objects.using(using).create(every=seconds, period="seconds"))
        rows = {row.name: row for row in PeriodicTask.objects.using(using).filter(
            name__in=[periodic_task_name(name) for name in services])}
        for name, service in services.items():
            wanted = {"interval_id": intervals[service.interval_seconds].pk, "crontab_id": None, "solar_id": None,
                      "clocked_id": None, "one_off": False, "task": TASK, "args": json.dumps([name])}
            row = rows.get(periodic_task_name(name))
            if row is None:
                PeriodicTask.objects.using(using).create(name=periodic_task_name(name), enabled=True,
                                                         description=service.description, **wanted)
            elif any(getattr(row, field) != value for field, value in wanted.items()):
                PeriodicTask.objects.using(using).filter(pk=row.pk).update(**wanted)
            else:
                continue
            changed.append(name)
        ServiceSchedule.objects.using(using).bulk_create(
            [ServiceSchedule(service=name, expected_since=now) for name in services], ignore_conflicts=True)
        if changed:
            # What the model's save() signal does; update() and migration models skip it. Running
            # beats compare this timestamp and reload their schedule when it moves.
            PeriodicTasks.objects.using(using).update_or_create(ident=1, defaults={"last_update": timezone.now()})
    return changed


def apply_after_migrate(sender, app_config=None, using=DEFAULT_DB_ALIAS, apps=global_apps, **kwargs):
    """post_migrate receiver: apply the intervals once the tables exist (skipped when migrated backwards)."""
    try:
        for model in ("django_celery_beat.PeriodicTask", "services.ServiceSchedule"):
            apps.get_model(model)
    except LookupError:
        return
    changed = apply_service_intervals(apps=apps, using=using)
    if changed:
        logger.info("Service intervals applied from the environment: %s", ", ".join(changed))
