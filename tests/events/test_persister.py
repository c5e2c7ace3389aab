"""The event persister: at least once out of the buffer, exactly once into the table.

Runs on SQLite and PostgreSQL; the tests that need PostgreSQL's row locks say so (postgres_only).
"""

import json
import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from events import buffer, persister, store
from events.emit import emit, make, resource
from events.models import Event, PendingEvent
from tests import factories
from tests.events.conftest import Worker, buffered, drain, stored_counts, tick

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def seen(monkeypatch):
    """The consumer's view: every event id handed to consumers, in order."""
    ids = []
    monkeypatch.setattr(persister, "consumers", [lambda events, now: ids.extend(str(e.id) for e in events)])
    return ids


@pytest.mark.parametrize("background", [False, True], ids=["sent-in-commit", "sent-by-sender-thread"])
def test_redis_restarting_mid_stream_loses_nothing_and_duplicates_nothing(events_in_redis, settings, background):
    """Events are emitted from one thread while another runs persister passes; Redis is stopped
    (SIGTERM) and started again on the same port and directory half-way. Every emitted id ends
    up stored exactly once."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENT_PERSISTER_BATCH_SIZE": 25,
                             "EVENT_PERSISTER_MAX_BATCHES": 2, "EVENTS_SEND_IN_BACKGROUND": background}
    ws = factories.workspace()
    total = 600
    emitted, done, failures = [], threading.Event(), []
    third = threading.Event()

    def emitter():
        try:
            for i in range(total):
                with transaction.atomic():
                    event = tick(ws.pk, i)
                    emit([event])
                emitted.append(event["id"])  # after the commit: its push has run
                if i == total // 3:
                    third.set()
                time.sleep(0.002)
        finally:
            done.set()

    def passes():
        while not done.is_set():
            try:
                persister.run_once()
            except Exception as exc:  # noqa: BLE001 - Redis is away for a moment: the next pass retries
                failures.append(type(exc).__name__)
            time.sleep(0.25)  # behind the emitter on purpose: unread entries wait when Redis stops

    workers = [Worker(emitter), Worker(passes)]
    for worker in workers:
        worker.start()
    assert third.wait(30)
    before = buffer.redis_client().xlen(buffer.stream_key())
    events_in_redis.restart_once_met(failures)
    for worker in workers:
        worker.join(60)
        assert not worker.is_alive() and worker.error is None, worker.error
    drain()

    assert before > 0, "nothing was waiting in the stream when Redis stopped: the test proved nothing"
    assert failures, "no persister pass met the outage"
    counts = stored_counts()
    assert len(emitted) == total
    assert set(counts) == set(emitted), f"lost {len(set(emitted) - set(counts))} events"
    assert max(counts.values()) == 1
    assert Event.objects.count() == total
    assert buffered() == (0, 0)


def test_a_crash_between_store_and_ack_redelivers_and_stores_nothing_twice(events_in_redis, monkeypatch, seen):
    ws = factories.workspace()
    events = [tick(ws.pk, i) for i in range(30)]
    emit(events)
    real_ack = buffer.ack_stream

    def crash(batch):
        raise SystemExit("killed after the transaction committed, before the acknowledgement")

    monkeypatch.setattr(buffer, "ack_stream", crash)
    with pytest.raises(SystemExit):
        persister.run_once()
    assert Event.objects.count() == 30  # stored and committed…
    assert buffer.redis_client().xpending(buffer.stream_key(), buffer.GROUP)["pending"] == 30  # …not acknowledged

    monkeypatch.setattr(buffer, "ack_stream", real_ack)
    summary = persister.run_once()
    assert summary == {"stored": 0, "skipped": 30}
    assert buffered() == (0, 0)
    assert set(stored_counts()) == {e["id"] for e in events} and max(stored_counts().values()) == 1
    assert sorted(seen) == sorted(e["id"] for e in events), "a consumer saw a redelivered event again"


def test_a_crash_before_the_table_batch_commits_keeps_the_rows_for_the_next_pass(events_in_table, monkeypatch, seen):
    ws = factories.workspace()
    emit([tick(ws.pk, i) for i in range(5)])
    real_ack = buffer.ack_table

    def crash(batch):
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(buffer, "ack_table", crash)
    with pytest.raises(RuntimeError):
        persister.run_once()
    assert PendingEvent.objects.count() == 5 and not Event.objects.exists()
    seen.clear()  # the consumer ran in the rolled-back transaction: its writes went with it
    monkeypatch.setattr(buffer, "ack_table", real_ack)
    assert persister.run_once()["stored"] == 5
    assert buffered() == (0, 0) and len(seen) == 5


POISON_ENTRIES = [
    {"e": "not json at all"},
    {"x": "no e field"},
    {"e": json.dumps(["a", "list"])},
    {"e": json.dumps({"name": "missing everything else"})},
    {"e": json.dumps({"id": "not-a-uuid", "workspace_id": 1, "occurred": "2026-01-01T00:00:00+00:00", "name": "x"})},
    {"e": json.dumps({"id": str(uuid.uuid4()), "workspace_id": "one", "occurred": "2026-01-01T00:00:00+00:00",
                      "name": "x"})},
    {"e": json.dumps({"id": str(uuid.uuid4()), "workspace_id": 1, "occurred": 12, "name": "x"})},
    {"e": json.dumps({"id": str(uuid.uuid4()), "workspace_id": 1, "occurred": "2026-01-01T00:00:00+00:00",
                      "name": "x", "payload": ["not", "a", "mapping"]})},
]


def test_poison_stream_entries_are_dropped_and_do_not_block_the_stream(events_in_redis):
    ws = factories.workspace()
    client = buffer.redis_client()
    good_before, good_after = tick(ws.pk, 1), tick(ws.pk, 2)
    emit([good_before])
    for fields in POISON_ENTRIES:
        client.xadd(buffer.stream_key(), fields)
    emit([good_after])
    drain()
    assert set(stored_counts()) == {good_before["id"], good_after["id"]}
    assert buffered() == (0, 0)
    assert client.xpending(buffer.stream_key(), buffer.GROUP)["pending"] == 0


def test_poison_table_rows_are_dropped_and_do_not_block_the_table(events_in_table):
    ws = factories.workspace()
    good = tick(ws.pk, 1)
    PendingEvent.objects.bulk_create([PendingEvent(body=b) for b in
                                      ["a string", 42, [1, 2], {"name": "x"}, *[json.loads(p["e"]) for p in
                                                                                 POISON_ENTRIES[3:]]]])
    emit([good])
    drain()
    assert set(stored_counts()) == {good["id"]}
    assert buffered() == (0, 0)


def test_an_event_the_database_refuses_is_dropped_alone(any_buffer):
    """A lone UTF-16 surrogate is valid JSON that PostgreSQL's jsonb refuses: one such event must
    not fail its batch on every pass forever (it did: the stream's pending batch never moved)."""
    ws = factories.workspace()
    good = [tick(ws.pk, i) for i in range(3)]
    bad = make(ws.pk, "test.tick", resource("test", "bad"), payload={"message": "half a pair: \ud800"})
    not_a_number = make(ws.pk, "test.tick", resource("test", "nan"), payload={"ratio": float("nan")})
    emit([good[0], bad, not_a_number, good[1]])
    emit([good[2]])
    drain()
    stored = stored_counts()
    assert {e["id"] for e in good} <= set(stored)
    assert buffered() == (0, 0)
    if bad["id"] in stored:  # SQLite keeps the escaped text as it came
        assert Event.objects.get(id=bad["id"]).payload["message"].startswith("half a pair")


def test_nul_characters_and_escaped_backslashes_survive_postgresql(any_buffer):
    ws = factories.workspace()
    event = make(ws.pk, "test.tick", resource("test", 1),
                 payload={"message": "a\x00b", "path": "C:\\u0000dir", "n\x00ame": 1})
    emit([event])
    drain()
    payload = Event.objects.get().payload
    assert payload["message"] in ("a\x00b", "a\ufffdb")
    assert payload["path"] == "C:\\u0000dir", "a literal backslash-u0000 text was rewritten"
    assert len(payload) == 3


def test_events_of_a_deleted_workspace_are_dropped(any_buffer):
    kept, gone = factories.workspace(), factories.workspace()
    keep = tick(kept.pk, 1)
    emit([keep, tick(gone.pk, 2), tick(gone.pk, 3)])
    gone.delete()
    drain()
    assert set(stored_counts()) == {keep["id"]}
    assert buffered() == (0, 0)


def test_deleting_a_workspace_deletes_its_stored_events(any_buffer):
    kept, gone = factories.workspace(), factories.workspace()
    emit([tick(kept.pk, 1), tick(gone.pk, 2)])
    drain()
    gone.delete()
    assert list(Event.objects.values_list("workspace_id", flat=True)) == [kept.pk]


def test_a_naive_occurred_time_is_read_as_utc(any_buffer):
    ws = factories.workspace()
    event = tick(ws.pk, 1)
    event["occurred"] = "2026-11-29T10:00:00"
    emit([event])
    drain()
    assert Event.objects.get().occurred == datetime.fromisoformat("2026-11-29T10:00:00+00:00")


def test_an_event_years_back_lands_outside_the_day_partitions_and_is_kept(any_buffer):
    ws = factories.workspace()
    event = tick(ws.pk, 1, occurred=datetime.fromisoformat("2019-03-01T12:00:00+00:00"))
    emit([event])
    drain()
    assert Event.objects.get().occurred.year == 2019


def test_a_redelivered_event_is_stored_once_and_reacted_to_once(any_buffer, seen):
    ws = factories.workspace()
    event = tick(ws.pk, 1)
    emit([event, dict(event)])  # the same id twice in one batch
    drain()
    emit([dict(event)])  # and again later
    drain()
    assert stored_counts() == {event["id"]: 1}
    assert seen == [event["id"]]


def test_a_failing_consumer_loses_only_its_own_writes(any_buffer, monkeypatch):
    ws = factories.workspace()

    def writes_then_fails(events, now):
        factories.workspace(name="written by a failing consumer")
        raise RuntimeError("consumer bug")

    got = []
    monkeypatch.setattr(persister, "consumers", [writes_then_fails, lambda events, now: got.extend(events)])
    emit([tick(ws.pk, i) for i in range(4)])
    drain()
    assert Event.objects.count() == 4 and len(got) == 4
    assert not type(ws).objects.filter(name="written by a failing consumer").exists()


@pytest.mark.parametrize("size", [10, 200])
def test_a_pass_costs_the_same_queries_whatever_the_batch_holds(any_buffer, settings, size):
    ws = factories.workspace()
    emit([tick(ws.pk, i) for i in range(size)])
    with CaptureQueriesContext(connection) as queries:
        assert persister.run_once()["stored"] == size
    # table: lock-read, savepoint, insert, delete, next empty read; SQLite adds two look-ups and
    # splits an insert by its limit of bound variables (200 events: 2 statements). Not per event.
    assert len(queries) <= 16, [q["sql"][:80] for q in queries]


def test_a_pass_is_bounded(any_buffer, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENT_PERSISTER_BATCH_SIZE": 10,
                             "EVENT_PERSISTER_MAX_BATCHES": 3}
    ws = factories.workspace()
    emit([tick(ws.pk, i) for i in range(50)])
    assert persister.run_once()["stored"] == 30
    assert sum(buffered()) == 20


def test_two_persister_passes_at_once_store_each_event_once(postgres_only, events_in_redis, seen):
    ws = factories.workspace()
    in_stream = [tick(ws.pk, i) for i in range(300)]
    emit(in_stream)
    in_table = [tick(ws.pk, 1000 + i) for i in range(300)]
    buffer.push_to_table(in_table)
    barrier = threading.Barrier(2)
    summaries = []

    def one_pass():
        barrier.wait(10)
        summaries.append(persister.run_once())

    workers = [Worker(one_pass) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.error is None, worker.error
    drain()
    expected = {e["id"] for e in in_stream + in_table}
    counts = stored_counts()
    assert set(counts) == expected and max(counts.values()) == 1
    assert sorted(seen) == sorted(expected), "a consumer saw an event twice"
    assert sum(s["stored"] for s in summaries) <= len(expected)


def test_store_persist_returns_only_new_events_in_batch_order(any_buffer):
    ws = factories.workspace()
    events = [tick(ws.pk, i, occurred=datetime.fromisoformat("2026-11-29T10:00:00+00:00") + timedelta(seconds=i))
              for i in range(5)]
    with transaction.atomic():
        first = store.persist(events[:3])
    with transaction.atomic():
        second = store.persist(events)
    assert [str(e.id) for e in first] == [e["id"] for e in events[:3]]
    assert [str(e.id) for e in second] == [e["id"] for e in events[3:]]


def test_a_batch_is_added_to_the_stream_in_one_command_in_order_also_after_a_script_flush(events_in_redis):
    """orchestrator/streams.py adds a batch with one script call (EVALSHA); a server that lost the
    script (a restart, SCRIPT FLUSH) gets its text and the batch still lands whole, in order."""
    client = buffer.redis_client()
    sent = [make(1, f"test.batch.{i}", resource("flow-run", str(i))) for i in range(300)]
    commands = []
    original = type(client).execute_command

    def counted(self, *args, **kwargs):
        commands.append(args[0])
        return original(self, *args, **kwargs)

    type(client).execute_command = counted
    try:
        buffer.push(sent[:200])
        client.script_flush()
        buffer.push(sent[200:])
    finally:
        type(client).execute_command = original
    # Per push: EVALSHA, and on a server without the script (new, then flushed) its text, then EVALSHA again.
    assert "XADD" not in commands and commands.count("SCRIPT LOAD") == 2
    assert set(commands) == {"EVALSHA", "SCRIPT LOAD", "SCRIPT FLUSH"}
    stored = [json.loads(fields[b"e"])["name"] for _, fields in client.xrange(buffer.stream_key())]
    assert stored == [event["name"] for event in sent]
