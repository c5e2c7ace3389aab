"""Towel: one ledger row per pass, overlapping passes skip, failures are visible, health is judged."""

import dataclasses
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import ProgrammingError
from django_celery_beat.models import PeriodicTask

from events.models import Event
from services import registry, towel
from services.beat import apply_service_intervals
from services.models import ServiceLease, ServicePass, ServiceSchedule
from tests import factories

pytestmark = pytest.mark.django_db

RECOVERY = ["zombie-killer", "lazarus", "mark-late-runs", "cancellation-cleanup", "fail-expired-pauses",
            "agent-monitor"]


def _explode(now):
    raise RuntimeError("the database went away")


@pytest.fixture
def break_service(monkeypatch):
    """break_service() -> from now on, mark-late-runs raises."""

    def make():
        service = registry.get("mark-late-runs")
        monkeypatch.setitem(registry._SERVICES, "mark-late-runs", dataclasses.replace(service, run_once=_explode))

    return make


@pytest.fixture
def broken_service(break_service):
    break_service()


def test_every_recovery_service_has_an_enabled_periodic_task(periodic_tasks):
    tasks = {t.name: t for t in PeriodicTask.objects.filter(name__in=[f"service: {n}" for n in RECOVERY])}
    assert len(tasks) == len(RECOVERY) and all(t.enabled and t.task == "services.run_service" for t in tasks.values())
    assert tasks["service: zombie-killer"].interval.every == 60
    assert tasks["service: lazarus"].interval.every == 600


def test_a_pass_writes_one_ledger_row_with_what_it_touched(flow, now):
    factories.flow_run(flow, scheduled_start=now - timedelta(minutes=5))
    assert towel.run("mark-late-runs", now) == {"runs_marked_late": 1}
    row = ServicePass.objects.get()
    assert (row.service, row.started, row.items, row.ok, row.error) == ("mark-late-runs", now, 1, True, "")
    assert row.summary == {"runs_marked_late": 1} and row.duration_ms >= 0


def test_a_failed_pass_records_its_traceback_and_emits_an_event(broken_service, ws, now, flush_events):
    assert towel.run("mark-late-runs", now) == {"error": "RuntimeError: the database went away"}
    row = ServicePass.objects.get()
    assert not row.ok and "Traceback" in row.error and "the database went away" in row.error
    flush_events()
    event = Event.objects.get(workspace=ws, name="service.failed")
    assert event.resource == {"kind": "service", "id": "mark-late-runs"}


def test_a_pass_skips_while_another_holds_the_lease(now):
    if towel.connection.vendor == "postgresql":
        pytest.skip("PostgreSQL's advisory lock is re-entrant per connection; test_concurrency holds it from a thread")
    with towel.service_lock("lazarus", now) as first:
        assert first
        assert towel.run("lazarus", now) == {"skipped": "another pass is running"}
    assert not ServicePass.objects.exists()
    assert towel.run("lazarus", now) == {"rescheduled": 0, "failed": 0}


def test_a_lease_left_by_a_crashed_holder_expires(now, settings):
    if towel.connection.vendor == "postgresql":
        pytest.skip("PostgreSQL uses advisory locks, which the server frees with the connection")
    ServiceLease.objects.create(service="lazarus", holder="dead-process", expires=now + timedelta(minutes=10))
    assert towel.run("lazarus", now) == {"skipped": "another pass is running"}
    assert towel.run("lazarus", now + timedelta(minutes=11)) == {"rescheduled": 0, "failed": 0}


def test_health_is_lost_after_three_intervals_without_success(break_service, now):
    towel.run("mark-late-runs", now)  # interval 5 s
    later = now + timedelta(seconds=14)
    assert towel.health_report(later)["mark-late-runs"]["healthy"] is True
    break_service()
    towel.run("mark-late-runs", later)  # this one fails
    report = towel.health_report(now + timedelta(seconds=16))["mark-late-runs"]
    assert report == {"healthy": False, "reason": "no success for 16 s (expected every 5 s)", "enabled": True,
                      "due_by": (now + timedelta(seconds=15)).isoformat(),
                      "expected_since": report["expected_since"], "last_success": now.isoformat(),
                      "last_error": "RuntimeError: the database went away", "last_error_at": later.isoformat(),
                      "interval_seconds": 5}


@pytest.fixture
def fresh_install(db):
    """fresh_install(at) -> beat's rows as a first `migrate` or beat start at `at` leaves them, no ledger."""

    def install(at):
        PeriodicTask.objects.filter(name__startswith="service: ").delete()
        ServiceSchedule.objects.all().delete()
        ServicePass.objects.all().delete()
        apply_service_intervals(at)

    return install


T0 = datetime(2026, 11, 29, 10, 0, tzinfo=dt_timezone.utc)


def test_a_fresh_install_is_healthy_until_a_service_is_overdue(fresh_install):
    fresh_install(T0)
    # Every service is healthy until the first are overdue: mark-late-runs, automations-proactive and
    # deliveries, every 5 s, after 15 s, and the event and log persisters, every second, after the shortest
    # window of all (TOWEL_UNHEALTHY_MIN_SECONDS).
    report = towel.health_report(T0 + timedelta(seconds=15))
    assert [name for name, service in report.items() if not service["healthy"]] == []
    assert [name for name, service in towel.health_report(T0 + timedelta(seconds=16)).items()
            if not service["healthy"]] == ["automations-proactive", "deliveries", "event-persister", "log-persister",
                                               "mark-late-runs"]
    # Lazarus runs every 10 min: beat's first pass comes 10 min after it starts; overdue after 3 intervals.
    report = towel.health_report(T0 + timedelta(minutes=10))
    assert report["lazarus"] | {"interval_seconds": 600} == {
        "healthy": True, "reason": "waiting for its first pass, due by 10:30:00 UTC", "enabled": True,
        "due_by": "2026-11-29T10:30:00+00:00", "expected_since": T0.isoformat(), "last_success": None,
        "last_error": None, "last_error_at": None, "interval_seconds": 600}
    assert towel.health_report(T0 + timedelta(minutes=30))["lazarus"]["healthy"] is True
    overdue = towel.health_report(T0 + timedelta(minutes=30, seconds=1))
    assert (overdue["lazarus"]["healthy"], overdue["lazarus"]["reason"]) == (
        False, "no success since it was expected at 10:00:00 UTC (30 min ago; expected every 10 min)")
    # mark-late-runs (every 5 s) has long been overdue by then.
    assert overdue["mark-late-runs"]["healthy"] is False


def test_a_service_that_succeeds_on_a_fresh_install_stays_healthy(fresh_install):
    fresh_install(T0)
    towel.run("lazarus", T0 + timedelta(minutes=10))
    report = towel.health_report(T0 + timedelta(minutes=39))["lazarus"]
    assert (report["healthy"], report["reason"], report["due_by"]) == (
        True, "last success 29 min ago", "2026-11-29T10:40:00+00:00")


def test_restarting_beat_does_not_make_a_service_that_never_succeeded_look_new(fresh_install):
    fresh_install(T0)
    # A beat restarting in a loop re-applies its intervals each time; the first expectation stands.
    apply_service_intervals(T0 + timedelta(minutes=25))
    assert towel.health_report(T0 + timedelta(minutes=31))["lazarus"]["healthy"] is False


def test_a_stopped_beat_shows_as_unhealthy_services_once_their_windows_pass(fresh_install):
    fresh_install(T0 - timedelta(days=1))
    for name in registry.all_services():
        assert "error" not in towel.run(name, T0)
    # Beat stops here: nothing runs any more.
    report = towel.health_report(T0 + timedelta(minutes=29))
    assert (report["lazarus"]["healthy"], report["lazarus"]["reason"]) == (True, "last success 29 min ago")
    assert (report["zombie-killer"]["healthy"], report["zombie-killer"]["reason"]) == (
        False, "no success for 29 min (expected every 60 s)")
    later = towel.health_report(T0 + timedelta(minutes=31))
    # Past 3 windows of every 10-minute-or-faster service; audit-retention and retention run
    # hourly, the partition manager daily.
    assert [name for name, service in later.items() if service["healthy"]] == ["audit-retention",
                                                                               "partition-manager", "retention"]
    assert [name for name, service in towel.health_report(T0 + timedelta(hours=3, minutes=1)).items()
            if service["healthy"]] == ["partition-manager"]
    assert [name for name, service in towel.health_report(T0 + timedelta(days=3, minutes=1)).items()
            if service["healthy"]] == []


def test_health_reads_intervals_from_the_environment_and_ignores_disabled_services(now, settings, periodic_tasks):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "LAZARUS_LOOP_SECONDS": 3600}
    PeriodicTask.objects.filter(name="service: agent-monitor").update(enabled=False)
    towel.run("lazarus", now)
    report = towel.health_report(now + timedelta(hours=2))
    assert report["lazarus"]["healthy"] and report["lazarus"]["interval_seconds"] == 3600
    assert report["agent-monitor"] | {"expected_since": None} == {
        "healthy": True, "reason": "disabled in the admin (Periodic tasks); not judged", "enabled": False,
        "due_by": None, "expected_since": None, "last_success": None, "last_error": None, "last_error_at": None,
        "interval_seconds": 30}


def test_a_service_no_beat_start_or_migrate_recorded_is_unhealthy(now):
    ServiceSchedule.objects.filter(service="lazarus").delete()
    report = towel.health_report(now)["lazarus"]
    assert (report["healthy"], report["reason"]) == (
        False, "never scheduled: no beat start or migrate has recorded it yet")


def test_healthz_says_why_a_service_is_healthy_or_not_without_failing_on_it(client, fresh_install):
    fresh_install(towel.timezone.now())
    response = client.get("/healthz")
    assert response.status_code == 200
    lazarus = response.json()["services"]["lazarus"]
    assert lazarus["healthy"] is True and lazarus["reason"].startswith("waiting for its first pass, due by ")
    ServiceSchedule.objects.update(expected_since=towel.timezone.now() - timedelta(minutes=45))
    response = client.get("/healthz")
    lazarus = response.json()["services"]["lazarus"]
    assert response.status_code == 200 and lazarus["healthy"] is False
    assert lazarus["reason"].startswith("no success since it was expected at ")
    assert lazarus["reason"].endswith("(45 min ago; expected every 10 min)")


def test_healthz_still_answers_when_the_health_report_fails(client, monkeypatch):
    def before_migrate(now):  # a new release's web process whose `migrate` has not run yet
        raise ProgrammingError('relation "services_serviceschedule" does not exist')

    monkeypatch.setattr(towel, "health_report", before_migrate)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["services"] == {
        "error": 'the health report failed: relation "services_serviceschedule" does not exist'}


def test_old_ledger_rows_are_pruned(now):
    ServicePass.objects.create(service="lazarus", started=now - timedelta(days=8))
    towel.run("lazarus", now)
    assert list(ServicePass.objects.values_list("started", flat=True)) == [now]
