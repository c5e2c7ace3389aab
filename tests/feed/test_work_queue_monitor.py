"""work-queue-monitor: a verdict per queue, stored; an event only when it changes; safe twice."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections

from runs.models import QueueHealth, State, WorkQueue
from services import registry, work_queue_monitor
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def queues(ws, now):
    """One queue of each kind: healthy, paused, silent, never polled, with a late run."""
    flow = factories.flow(ws)
    fresh = now - timedelta(seconds=10)
    made = {
        "healthy": factories.work_queue(ws, name="healthy", last_polled=fresh),
        "paused": factories.work_queue(ws, name="paused", last_polled=fresh, paused=True),
        "silent": factories.work_queue(ws, name="silent", last_polled=now - timedelta(seconds=301)),
        "never": factories.work_queue(ws, name="never"),
        "late": factories.work_queue(ws, name="late", last_polled=fresh),
    }
    factories.flow_run(flow, State.LATE, work_queue=made["late"])
    # A finished run and a deleted late run do not make a queue unhealthy.
    factories.flow_run(flow, State.COMPLETED, work_queue=made["healthy"])
    factories.flow_run(flow, State.LATE, work_queue=made["healthy"], deleted_at=now)
    return made


def health():
    return dict(WorkQueue.objects.values_list("name", "health"))


def test_each_queue_is_judged_and_the_verdict_stored(queues, now, flush_events):
    assert work_queue_monitor.run_once(now) == {"healthy": 1, "unhealthy": 4}
    assert health() == {"healthy": "healthy", "paused": "unhealthy", "silent": "unhealthy", "never": "unhealthy",
                        "late": "unhealthy"}
    assert set(WorkQueue.objects.values_list("health_changed", flat=True)) == {now}
    events = {e.resource["name"]: e for e in flush_events()}
    assert {name: e.name for name, e in events.items()} == {
        "healthy": "work-queue.healthy", "paused": "work-queue.unhealthy", "silent": "work-queue.unhealthy",
        "never": "work-queue.unhealthy", "late": "work-queue.unhealthy"}
    assert events["paused"].payload == {"from": "unknown", "to": "unhealthy", "reasons": ["paused"]}
    assert events["silent"].payload["reasons"] == ["not polled for over 300 s"]
    assert events["never"].payload["reasons"] == ["never polled"]
    assert events["late"].payload["reasons"] == ["has late runs"]
    assert events["healthy"].payload == {"from": "unknown", "to": "healthy"}


def test_an_unchanged_verdict_emits_nothing_and_a_change_emits_once(queues, now, flush_events):
    work_queue_monitor.run_once(now)
    flush_events()
    later = now + timedelta(seconds=30)
    assert work_queue_monitor.run_once(later) == {"healthy": 0, "unhealthy": 0}
    assert flush_events().count() == 5
    # The late run starts, the paused queue resumes: both become healthy, once.
    queues["late"].flow_runs.filter(state=State.LATE).update(state=State.RUNNING)
    WorkQueue.objects.filter(pk=queues["paused"].pk).update(paused=False)
    assert work_queue_monitor.run_once(later) == {"healthy": 2, "unhealthy": 0}
    assert work_queue_monitor.run_once(later) == {"healthy": 0, "unhealthy": 0}
    became = flush_events().filter(name="work-queue.healthy", occurred=later)
    assert sorted(e.resource["name"] for e in became) == ["late", "paused"]
    assert WorkQueue.objects.get(pk=queues["paused"].pk).health_changed == later
    assert WorkQueue.objects.get(pk=queues["healthy"].pk).health_changed == now


def test_the_poll_window_is_a_setting(queues, now, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "WORK_QUEUE_HEALTH_POLL_SECONDS": 5}
    work_queue_monitor.run_once(now)
    assert health()["healthy"] == "unhealthy"


def test_a_pass_costs_the_same_queries_for_5_queues_or_100(ws, now, django_assert_max_num_queries):
    for i in range(5):
        factories.work_queue(ws, last_polled=now if i % 2 else None)
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        work_queue_monitor.run_once(now)
    WorkQueue.objects.update(health=QueueHealth.UNKNOWN)
    flow = factories.flow(ws)
    for i in range(95):
        queue = factories.work_queue(ws, last_polled=now if i % 2 else None)
        if i % 3 == 0:
            factories.flow_run(flow, State.LATE, work_queue=queue)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert sum(work_queue_monitor.run_once(now).values()) == 100


def test_it_is_registered_with_its_interval_setting():
    service = registry.get("work-queue-monitor")
    assert service.run_once is work_queue_monitor.run_once
    assert service.interval_setting == "WORK_QUEUE_MONITOR_LOOP_SECONDS" and service.interval_seconds == 30


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_copies_at_once_store_and_emit_each_change_once(postgres_only, ws, now):
    from events.models import Event, PendingEvent
    from events.testing import flush

    for i in range(40):
        factories.work_queue(ws, last_polled=now if i % 2 else None)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def copy():
        try:
            barrier.wait()
            results.append(work_queue_monitor.run_once(now))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=copy) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sum(r["healthy"] for r in results) == 20 and sum(r["unhealthy"] for r in results) == 20
    flush(now)
    events = Event.objects.filter(name__startswith="work-queue.")
    assert events.count() == 40
    assert len({e.resource["id"] for e in events}) == 40
    assert not PendingEvent.objects.exists()
