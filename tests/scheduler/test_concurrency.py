"""Two, four or eight copies of the scheduler at once never create a duplicate run (PostgreSQL, threads)."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.db.models import Count

from runs.models import FlowRun, ScheduleKind, ScheduleStatus
from runs.scheduling import pause_schedule, resume_schedule
from services.scheduler import run_once
from tests import factories
from tests.scheduler.conftest import utc

NOW = utc(2026, 5, 4, 12, 0, 7)


def run_copies(copies, target):
    """Run `target()` in `copies` threads released at the same instant; returns their results."""
    return run_together([target] * copies)


def run_together(targets):
    """Run each of `targets` in its own thread, all released at the same instant; returns their results."""
    barrier = threading.Barrier(len(targets))
    results, errors = [], []

    def one(target):
        try:
            barrier.wait()
            results.append(target())
        except Exception as exc:  # noqa: BLE001 (reported below, with the thread's error)
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one, args=(target,)) for target in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def duplicates():
    return (FlowRun.objects.filter(auto_scheduled=True).values("flow_id", "schedule_slug", "scheduled_start")
            .annotate(n=Count("id")).filter(n__gt=1).count())


@pytest.fixture
def postgres():
    if connection.vendor != "postgresql":
        pytest.skip("concurrency is proven on PostgreSQL (CI always has it)")


@pytest.fixture
def schedules(postgres, transactional_db):
    ws = factories.workspace()
    made = []
    for i in range(24):
        flow = factories.flow(ws)
        if i % 3 == 0:
            made.append(factories.schedule(flow, slug="cron", kind=ScheduleKind.CRON, cron=f"{i} * * * *"))
        elif i % 3 == 1:
            made.append(factories.schedule(flow, slug="every", interval_seconds=60 * (i + 1)))
        else:
            made.append(factories.schedule(flow, slug="month-end", kind=ScheduleKind.CALENDAR, timezone="Europe/London",
                                           calendar={"base": {"rule": "last_business_day_of_month"},
                                                     "holidays": {"country": "GB"}, "times": ["18:00"]}))
    return made


@pytest.mark.postgres
@pytest.mark.parametrize("copies", [2, 4, 8])
def test_concurrent_passes_create_each_run_exactly_once(schedules, copies):
    results = run_copies(copies, lambda: run_once(NOW))
    assert FlowRun.objects.count() == 240
    assert sum(r["runs_created"] for r in results) == 240
    assert duplicates() == 0


@pytest.mark.postgres
@pytest.mark.parametrize("copies", [2, 8])
def test_concurrent_passes_after_downtime_top_up_exactly(schedules, copies):
    run_once(NOW)
    later = NOW + timedelta(hours=3)
    results = run_copies(copies, lambda: run_once(later))
    assert FlowRun.objects.filter(scheduled_start__gt=later).count() == 240
    assert sum(r["runs_created"] for r in results) == FlowRun.objects.filter(created=later).count()
    assert duplicates() == 0


@pytest.mark.postgres
def test_passes_racing_a_resume_create_each_run_once(schedules):
    for s in schedules:
        pause_schedule(s, NOW)
    assert FlowRun.objects.count() == 0

    def resume_all():
        return sum(resume_schedule(s, NOW) for s in schedules)

    passes = [lambda: run_once(NOW)["runs_created"]] * 3
    created = run_together([resume_all, *passes])
    assert all(s.status == ScheduleStatus.ACTIVE for s in schedules)
    assert sum(created) == 240
    assert FlowRun.objects.count() == 240 and duplicates() == 0
