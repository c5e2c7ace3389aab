"""Towel: the layer every maintenance routine runs through.

`run(name)` takes the service's lock (overlapping beats skip instead of piling up), times the
pass, writes one `ServicePass` ledger row, and on failure logs the traceback and emits a
`service.failed` event. `health_report(now)` turns the ledger into a verdict per service.

The lock cannot outlive a crash: on PostgreSQL it is a session advisory lock, released by the
server when the connection dies; elsewhere it is a `ServiceLease` row that expires. A pass whose
connection died (server restart, `pg_terminate_backend`) is still recorded as failed, on a fresh
connection, and the next pass runs as usual.
"""

import hashlib
import logging
import time
import traceback
import uuid
from contextlib import contextmanager
from datetime import timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Max, OuterRef, Subquery
from django.utils import timezone

from services import registry
from services.beat import PERIODIC_TASK_PREFIX, periodic_task_name
from services.models import ServiceLease, ServicePass, ServiceSchedule

logger = logging.getLogger(__name__)


def _config(key):
    return settings.ORCHESTRATOR[key]


def _advisory_key(name):
    # A stable signed 64-bit key per service name (Python's hash() changes between processes).
    return int.from_bytes(hashlib.sha256(f"towel:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def _advisory_lock(name):
    key = _advisory_key(name)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = cursor.fetchone()[0]
    session = connection.connection  # the server session that holds the lock
    try:
        yield acquired
    finally:
        if acquired and connection.connection is session:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except DatabaseError:
                # The connection died with the pass; the server already freed its locks.
                logger.warning("Could not release the lock of %s; the connection is gone.", name)
        elif acquired:
            # The session that held the lock was closed (a broken connection is replaced before
            # the ledger row is written): the server freed the lock with it.
            logger.info("The lock of %s went with its closed connection.", name)


@contextmanager
def _lease(name, now):
    holder = uuid.uuid4().hex
    expires = now + timedelta(seconds=_config("TOWEL_LEASE_SECONDS"))
    with transaction.atomic():
        ServiceLease.objects.get_or_create(service=name, defaults={"expires": now - timedelta(seconds=1)})
        # Conditional: only a free or expired lease is taken, so two takers never both succeed.
        acquired = ServiceLease.objects.filter(service=name, expires__lte=now).update(holder=holder, expires=expires) == 1
    try:
        yield acquired
    finally:
        if acquired:
            ServiceLease.objects.filter(service=name, holder=holder).update(holder="", expires=now)


def service_lock(name, now):
    """Context manager yielding True when this process may run service `name` now."""
    if connection.vendor == "postgresql":
        return _advisory_lock(name)
    return _lease(name, now)


def items_touched(summary):
    """The number of rows a pass changed: the sum of the whole numbers in its summary."""
    if isinstance(summary, dict):
        return sum(v for v in summary.values() if isinstance(v, int) and not isinstance(v, bool))
    return 0


def _emit_failure_events(name, now, message):
    # Services are global, so a failed pass concerns every workspace: each gets the event its
    # automations and dashboard can see.
    from events.emit import emit, make, resource
    from runs.models import Workspace

    emit([make(ws_id, "service.failed", resource("service", name), payload={"error": message}, occurred=now)
          for ws_id in Workspace.objects.values_list("id", flat=True)])


def _replace_broken_connection():
    """Close the connection if the failed pass broke it (server restart, pg_terminate_backend, a
    network cut), so that the next query opens a fresh one. Inside a caller's transaction the
    connection is the caller's to handle."""
    if connection.in_atomic_block or connection.connection is None or not connection.errors_occurred:
        return
    if not connection.is_usable():
        connection.close()


def _record_failure(name, now, duration_ms, trace, message):
    """The failed pass's ledger row and events, on a working connection when there is one."""
    try:
        _replace_broken_connection()
        ServicePass.objects.create(service=name, started=now, duration_ms=duration_ms, ok=False, error=trace)
        _emit_failure_events(name, now, message)
    except DatabaseError:
        # The database is unreachable: the log above is all there is; the next pass tries again.
        logger.exception("Could not record the failed pass of %s", name)
        _replace_broken_connection()


def run(name, now=None):
    """Run one pass of service `name` through its lock; returns its summary, or why it did not run."""
    service = registry.get(name)
    now = now or timezone.now()
    with service_lock(name, now) as acquired:
        if not acquired:
            logger.info("Skipped %s: another pass is still running.", name)
            return {"skipped": "another pass is running"}
        started = time.perf_counter()
        try:
            summary = service.run_once(now)
        except Exception as exc:
            duration_ms = int((time.perf_counter() - started) * 1000)
            logger.exception("Service %s failed after %d ms", name, duration_ms)
            _record_failure(name, now, duration_ms, traceback.format_exc(), f"{type(exc).__name__}: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}"}
        duration_ms = int((time.perf_counter() - started) * 1000)
        summary = summary if isinstance(summary, dict) else {}
        ServicePass.objects.create(service=name, started=now, duration_ms=duration_ms,
                                   items=items_touched(summary), summary=summary, ok=True)
        retention = now - timedelta(days=_config("TOWEL_LEDGER_RETENTION_DAYS"))
        ServicePass.objects.filter(service=name, started__lt=retention).delete()
        return summary


def intervals(services):
    """Seconds between passes per service name (from settings), and whether its beat row is enabled.

    The interval's one source is the environment (services/beat.py copies it into beat's rows);
    `enabled` is the admin's switch on the PeriodicTask row (no row yet: enabled).
    """
    from django_celery_beat.models import PeriodicTask

    seconds = {name: service.interval_seconds for name, service in services.items()}
    enabled = dict.fromkeys(services, True)
    rows = PeriodicTask.objects.filter(name__in=[periodic_task_name(n) for n in services])
    for task_name, is_enabled in rows.values_list("name", "enabled"):
        enabled[task_name[len(PERIODIC_TASK_PREFIX):]] = is_enabled
    return seconds, enabled


def _duration(delta):
    """A duration in the unit a person would say: 45 s, 35 min, 3 h 5 min, 2 days."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def _moment(at, now):
    """A time in UTC, with its date unless it is today's."""
    at, now = at.astimezone(dt_timezone.utc), now.astimezone(dt_timezone.utc)
    return f"{at:%H:%M:%S} UTC" if at.date() == now.date() else f"{at:%Y-%m-%d %H:%M} UTC"


def _verdict(now, interval, enabled, last_success, expected_since):
    """(healthy, reason, due_by) of one service; due_by is when it is overdue without a success.

    The clock starts at its last success, or before any at when beat was first expected to run it
    (services/beat.py records that): a service is healthy until it is overdue, i.e. until
    TOWEL_UNHEALTHY_INTERVALS (3) of its intervals pass without a success, and at least
    TOWEL_UNHEALTHY_MIN_SECONDS (15).
    """
    if not enabled:
        return True, "disabled in the admin (Periodic tasks); not judged", None
    since = last_success or expected_since
    if since is None:
        return False, "never scheduled: no beat start or migrate has recorded it yet", None
    window = timedelta(seconds=max(interval * _config("TOWEL_UNHEALTHY_INTERVALS"), _config("TOWEL_UNHEALTHY_MIN_SECONDS")))
    due_by = since + window
    if now <= due_by:
        if last_success is None:
            return True, f"waiting for its first pass, due by {_moment(due_by, now)}", due_by
        return True, f"last success {_duration(now - last_success)} ago", due_by
    every = f"expected every {_duration(timedelta(seconds=interval))}"
    if last_success is None:
        return False, (f"no success since it was expected at {_moment(expected_since, now)} "
                       f"({_duration(now - expected_since)} ago; {every})"), due_by
    return False, f"no success for {_duration(now - last_success)} ({every})", due_by


def health_report(now):
    """Per service: healthy and why, when it is due by, last success, last error (its last line)
    and when, interval seconds.

    A service is unhealthy once it is overdue: no success within TOWEL_UNHEALTHY_INTERVALS (3) of
    its intervals of its last success or, before its first, of when beat was first expected to run
    it. A service whose PeriodicTask an admin disabled is reported but not judged. `now` is a
    parameter: the verdict is a function of the ledger and the time.
    """
    services = registry.all_services()
    seconds, enabled = intervals(services)
    expected = dict(ServiceSchedule.objects.filter(service__in=services).values_list("service", "expected_since"))
    successes = dict(ServicePass.objects.filter(ok=True, service__in=services).values("service")
                     .annotate(last=Max("started")).values_list("service", "last"))
    latest_failure = (ServicePass.objects.filter(ok=False, service=OuterRef("service"))
                      .order_by("-started", "-id").values("id")[:1])
    failures = {row.service: row for row in ServicePass.objects.filter(
        ok=False, service__in=services, id=Subquery(latest_failure)).only("service", "started", "error")}
    report = {}
    for name in services:
        last_success = successes.get(name)
        failure = failures.get(name)
        healthy, reason, due_by = _verdict(now, seconds[name], enabled[name], last_success, expected.get(name))
        last_line = failure.error.strip().splitlines()[-1] if failure and failure.error.strip() else None
        report[name] = {
            "healthy": healthy,
            "reason": reason,
            "enabled": enabled[name],
            "due_by": due_by.isoformat() if due_by else None,
            "expected_since": expected[name].isoformat() if name in expected else None,
            "last_success": last_success.isoformat() if last_success else None,
            "last_error": last_line,
            "last_error_at": failure.started.isoformat() if failure else None,
            "interval_seconds": seconds[name],
        }
    return report
