"""Towel: one ledger row per pass, overlapping passes skip, failures are visible, health is judged."""

import dataclasses
from datetime import timedelta

import pytest
from django_celery_beat.models import PeriodicTask

from runs.models import Event
from services import registry, towel
from services.models import ServiceLease, ServicePass
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


def test_a_failed_pass_records_its_traceback_and_emits_an_event(broken_service, ws, now):
    assert towel.run("mark-late-runs", now) == {"error": "RuntimeError: the database went away"}
    row = ServicePass.objects.get()
    assert not row.ok and "Traceback" in row.error and "the database went away" in row.error
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
    assert report == {"healthy": False, "enabled": True, "last_success": now.isoformat(),
                      "last_error": "RuntimeError: the database went away", "last_error_at": later.isoformat(),
                      "interval_seconds": 5}


def test_health_reads_intervals_from_the_environment_and_ignores_disabled_services(now, settings, periodic_tasks):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "LAZARUS_LOOP_SECONDS": 3600}
    PeriodicTask.objects.filter(name="service: agent-monitor").update(enabled=False)
    towel.run("lazarus", now)
    report = towel.health_report(now + timedelta(hours=2))
    assert report["lazarus"]["healthy"] and report["lazarus"]["interval_seconds"] == 3600
    assert report["agent-monitor"] == {"healthy": True, "enabled": False, "last_success": None, "last_error": None,
                                       "last_error_at": None, "interval_seconds": 30}
    assert report["zombie-killer"]["healthy"] is False  # never succeeded


def test_healthz_shows_service_health_without_failing_on_it(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["services"]["zombie-killer"]["healthy"] is False


def test_old_ledger_rows_are_pruned(now):
    ServicePass.objects.create(service="lazarus", started=now - timedelta(days=8))
    towel.run("lazarus", now)
    assert list(ServicePass.objects.values_list("started", flat=True)) == [now]
