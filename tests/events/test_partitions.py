"""The partition manager: day partitions ahead, whole days dropped past the longest retention, and
the events of workspaces with a shorter one deleted in bounded batches. Time is injected."""

import threading
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import connection

from events import partitions
from events.models import Event
from runs.models import Workspace
from tests import factories
from tests.events.conftest import Worker

NOW = datetime(2031, 1, 10, 12, 0, tzinfo=dt_timezone.utc)


def at(day, hour=12):
    return datetime(2031, 1, day, hour, 0, tzinfo=dt_timezone.utc)


def event(ws, occurred, name="test.tick"):
    return Event.objects.create(workspace=ws, occurred=occurred, received=occurred, name=name,
                                resource={"kind": "test", "id": "1"})


def partition_of(event_row):
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM events_event WHERE id = %s", [event_row.id])
        row = cursor.fetchone()
    return row[0] if row else None


def days():
    with connection.cursor() as cursor:
        return sorted(partitions.partitions(cursor))


def retention(ws, days_):
    Workspace.objects.filter(pk=ws.pk).update(event_retention_days=days_)


@pytest.fixture
def pg(postgres_only, db):
    assert partitions.is_partitioned(), "migration 0002 did not make events_event partitioned"
    # The test's rows would otherwise keep their deferred foreign-key checks pending until a commit
    # that never comes, and PostgreSQL refuses to drop a partition with pending checks. (In
    # production the rows were committed long before their day is dropped.)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_a_pass_creates_yesterday_through_a_week_ahead(pg):
    summary = partitions.run_once(NOW)
    assert summary["created"] == 9
    made = [d for d in days() if d.year == 2031]
    assert made == [(NOW - timedelta(days=1)).date() + timedelta(days=i) for i in range(9)]
    ws = factories.workspace()
    # A day runs from UTC midnight to midnight.
    assert partition_of(event(ws, at(10, 0))) == "events_event_p20310110"
    assert partition_of(event(ws, datetime(2031, 1, 10, 23, 59, 59, tzinfo=dt_timezone.utc))) == "events_event_p20310110"
    assert partition_of(event(ws, at(18, 0))) == "events_event_default"


def test_a_second_pass_creates_nothing(pg):
    partitions.run_once(NOW)
    before = days()
    assert partitions.run_once(NOW) == {"created": 0, "moved_from_default": 0, "dropped": 0, "deleted": 0}
    assert days() == before


def test_rows_waiting_in_the_default_partition_move_into_their_new_day(pg):
    ws = factories.workspace()
    early = [event(ws, at(15)), event(ws, at(15, 23))]
    later = event(ws, at(25))
    assert {partition_of(e) for e in early} == {"events_event_default"}
    summary = partitions.run_once(NOW)
    assert summary["moved_from_default"] == 2
    assert {partition_of(e) for e in early} == {"events_event_p20310115"}
    assert partition_of(later) == "events_event_default"
    assert Event.objects.count() == 3


def test_days_past_the_longest_retention_are_dropped_with_their_rows(pg):
    long_ws, short_ws = factories.workspace(), factories.workspace()
    Workspace.objects.update(event_retention_days=5)
    retention(short_ws, 2)
    partitions.run_once(NOW)  # 01-09 … 01-17
    old, kept = event(long_ws, at(12)), event(long_ws, at(16))
    ancient = event(long_ws, datetime(2020, 5, 1, tzinfo=dt_timezone.utc))  # in the default partition

    later = at(20)  # the longest retention (5 days) keeps 01-15 12:00 onwards
    summary = partitions.run_once(later)
    remaining = [d for d in days() if d.year == 2031]
    assert remaining[0] == datetime(2031, 1, 15).date(), "a day wholly past retention was kept, or one within it dropped"
    assert remaining[-1] == datetime(2031, 1, 27).date()
    assert not any(d.year < 2031 for d in days()), "the days made by the migration were not dropped"
    assert summary["dropped"] >= 6
    assert not Event.objects.filter(pk__in=[old.pk, ancient.pk]).exists()
    assert Event.objects.filter(pk=kept.pk).exists()


def test_a_shorter_retention_deletes_old_events_in_bounded_batches(db, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENT_RETENTION_BATCH_SIZE": 3,
                             "EVENT_RETENTION_MAX_BATCHES": 2}
    short_ws, long_ws = factories.workspace(), factories.workspace()
    retention(short_ws, 2)
    retention(long_ws, 30)
    old_short = [event(short_ws, NOW - timedelta(days=5, minutes=i)) for i in range(10)]
    recent_short = [event(short_ws, NOW - timedelta(days=1, minutes=i)) for i in range(2)]
    old_long = [event(long_ws, NOW - timedelta(days=5, minutes=i)) for i in range(4)]

    assert partitions.delete_expired(NOW) == 6, "one pass deleted more than its budget"
    assert partitions.delete_expired(NOW) == 4
    assert partitions.delete_expired(NOW) == 0
    left = set(Event.objects.values_list("id", flat=True))
    assert left == {e.id for e in recent_short + old_long}
    assert not left & {e.id for e in old_short}


def test_on_sqlite_a_pass_only_deletes_by_date(db):
    if connection.vendor == "postgresql":
        pytest.skip("the SQLite path")
    ws = factories.workspace()
    retention(ws, 3)
    gone, kept = event(ws, NOW - timedelta(days=4)), event(ws, NOW - timedelta(days=2))
    assert partitions.run_once(NOW) == {"deleted": 1}
    assert list(Event.objects.values_list("id", flat=True)) == [kept.id]
    assert not Event.objects.filter(pk=gone.pk).exists()


def test_the_deleting_pass_costs_the_same_queries_for_many_workspaces(db, django_assert_max_num_queries):
    for _ in range(20):
        ws = factories.workspace()
        retention(ws, 3)
        event(ws, NOW - timedelta(days=10))
    # workspaces, then per distinct retention: one look-up and one delete per batch, and the final look-up.
    with django_assert_max_num_queries(12):
        partitions.delete_expired(NOW)
    assert not Event.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_passes_at_once_both_succeed_and_make_each_day_once(postgres_only):
    # Far enough ahead to make 9 new days, near enough that the retention (30 days) drops none.
    ahead = datetime.now(dt_timezone.utc) + timedelta(days=20)
    before = set(days())
    barrier = threading.Barrier(2)
    summaries = []

    def one_pass():
        barrier.wait(10)
        summaries.append(partitions.run_once(ahead))

    workers = [Worker(one_pass) for _ in range(2)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert worker.error is None, worker.error
        assert sorted(s["created"] for s in summaries) == [0, 9]
        assert {ahead.date() + timedelta(days=i) for i in range(-1, 8)} <= set(days())
    finally:
        # Leave the test database's days as the migration made them for the tests that follow.
        with connection.cursor() as cursor:
            for day, name in partitions.partitions(cursor).items():
                if day not in before:
                    cursor.execute(f"DROP TABLE {name}")
