"""Emitting: after commit only, never failing or waiting on the change when Redis is away."""

import logging
import socket
import time

import pytest
import redis
from django.db import transaction

from events import buffer, persister
from events.emit import emit, make, resource
from events.models import Event, PendingEvent
from runs.models import Actor, FlowRun, State
from runs.states import set_flow_run_state
from tests import factories
from tests.events.conftest import buffered, drain, tick

pytestmark = pytest.mark.django_db(transaction=True)

BUFFER_LOGGER = "events.buffer"


def redis_warnings(caplog):
    return [r for r in caplog.records if r.name == BUFFER_LOGGER and "did not take" in r.getMessage()]


def running_run():
    ws = factories.workspace()
    return factories.flow_run(factories.flow(ws), state=State.RUNNING)


def test_a_state_change_is_buffered_only_after_its_transaction_commits(any_buffer):
    """With Redis, the event leaves after the commit; in the embedded mode (the table), its row is
    written in the change's own transaction: the commit makes it visible, a rollback removes it."""
    run = running_run()
    with transaction.atomic():
        set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
        expected = (0, 0) if any_buffer is not None else (0, 1)
        assert buffered() == expected, "an event left before its change committed"
    assert sum(buffered()) == 1
    drain()
    event = Event.objects.get()
    assert event.name == "flow-run.state.completed"
    assert event.resource == {"kind": "flow-run", "id": str(run.pk)}
    assert {"kind": "flow", "id": str(run.flow_id)} in event.related
    assert event.payload["from"] == State.RUNNING and event.payload["to"] == State.COMPLETED


def test_a_rolled_back_change_emits_nothing(any_buffer):
    run = running_run()
    with pytest.raises(RuntimeError), transaction.atomic():
        set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
        raise RuntimeError("the caller's transaction fails after the transition")
    assert FlowRun.objects.get(pk=run.pk).state == State.RUNNING
    assert buffered() == (0, 0)
    drain()
    assert not Event.objects.exists()


def test_a_rolled_back_savepoint_drops_only_its_own_events(any_buffer):
    ws = factories.workspace()
    with transaction.atomic():
        emit([tick(ws.pk, 1)])
        with pytest.raises(RuntimeError), transaction.atomic():
            emit([tick(ws.pk, 2)])
            raise RuntimeError
    drain()
    assert [e.payload["i"] for e in Event.objects.all()] == [1]


def test_emitting_is_off_when_events_are_disabled(any_buffer, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_ENABLED": False}
    set_flow_run_state(running_run(), State.COMPLETED, actor=Actor.AGENT)
    assert buffered() == (0, 0)


def test_a_refused_redis_costs_the_change_nothing_and_the_event_waits_in_the_table(settings, caplog):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    settings.REDIS_URL = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"  # bound, never listening: refused
    buffer.reset()
    run = running_run()
    started = time.perf_counter()
    set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    assert time.perf_counter() - started < 1.0
    assert FlowRun.objects.get(pk=run.pk).state == State.COMPLETED
    assert PendingEvent.objects.count() == 1
    assert len(redis_warnings(caplog)) == 1
    # The pass stores what the table holds, then fails on the stream (Towel shows the outage).
    with pytest.raises(redis.ConnectionError):
        persister.run_once()
    assert not PendingEvent.objects.exists()
    assert Event.objects.get().name == "flow-run.state.completed"
    closed.close()


@pytest.fixture
def frozen_redis(settings):
    """A server that accepts connections and never answers (a hung host): every call times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    settings.REDIS_URL = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_REDIS_TIMEOUT_SECONDS": 0.3}
    buffer.reset()
    yield
    server.close()
    buffer.reset()


class Clock:
    """Stands in for the buffer's `time` module: monotonic() is ours to move."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


def test_a_frozen_redis_costs_at_most_one_timeout_per_interval(frozen_redis, monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(buffer, "time", clock)
    runs = [running_run() for _ in range(10)]
    started = time.perf_counter()
    for run in runs:
        set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    elapsed = time.perf_counter() - started
    # One 0.3 s timeout for the first change; the other nine skip Redis (10 timeouts would be 3 s).
    assert elapsed < 1.5, f"10 changes took {elapsed:.2f} s"
    assert len(redis_warnings(caplog)) == 1
    assert PendingEvent.objects.count() == 10

    clock.now += buffer.REDIS_RETRY_SECONDS - 0.1
    set_flow_run_state(running_run(), State.COMPLETED, actor=Actor.AGENT)
    assert len(redis_warnings(caplog)) == 1, "Redis was tried again within the interval"
    clock.now += 0.2
    set_flow_run_state(running_run(), State.COMPLETED, actor=Actor.AGENT)
    assert len(redis_warnings(caplog)) == 2, "Redis was not tried again after the interval"
    assert PendingEvent.objects.count() == 12


def test_events_go_back_to_redis_once_it_answers_again(events_in_redis, monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(buffer, "time", clock)
    ws = factories.workspace()
    events_in_redis.stop()
    emit([tick(ws.pk, 1)])
    assert PendingEvent.objects.count() == 1
    events_in_redis.start()
    emit([tick(ws.pk, 2)])  # within the interval: still the table, without trying Redis
    assert PendingEvent.objects.count() == 2 and len(redis_warnings(caplog)) == 1
    clock.now += buffer.REDIS_RETRY_SECONDS
    emit([tick(ws.pk, 3)])
    assert buffered() == (1, 2)
    drain()
    assert sorted(e.payload["i"] for e in Event.objects.all()) == [1, 2, 3]


def test_an_event_that_cannot_be_buffered_anywhere_is_logged_and_the_change_stands(events_in_table, monkeypatch,
                                                                                     caplog):
    def broken(events):
        raise RuntimeError("the database is gone too")

    monkeypatch.setattr(buffer, "push_to_table", broken)
    monkeypatch.setattr(buffer, "insert_pending", broken)  # the embedded mode's write in the change
    run = running_run()
    set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    assert FlowRun.objects.get(pk=run.pk).state == State.COMPLETED
    assert any("they are lost" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_make_carries_plain_json_with_its_own_id():
    first = make(7, "x.y", resource("flow-run", 12, "nightly"))
    second = make(7, "x.y", resource("flow-run", 12))
    assert first["id"] != second["id"]
    assert first["resource"] == {"kind": "flow-run", "id": "12", "name": "nightly"}
    assert second["resource"] == {"kind": "flow-run", "id": "12"}
    assert first["workspace_id"] == 7 and first["payload"] == {} and first["related"] == []


@pytest.mark.parametrize("where", ["redis", "table", "redis refused", "with the change"])
def test_an_encoded_event_is_stored_as_the_same_event_made_as_a_dict(where, settings, request, caplog):
    """events.emit.Encoded (a claim's events, built by PostgreSQL): through the stream, the table, the
    table while Redis refuses, and the embedded mode's rows written with the change, an event sent as
    its JSON text is stored as the same event sent as a dict."""
    import json

    from events.emit import Encoded

    if where == "redis":
        request.getfixturevalue("events_in_redis")
    elif where == "redis refused":
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        request.addfinalizer(closed.close)
        settings.REDIS_URL = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
        buffer.reset()
        request.addfinalizer(buffer.reset)
    else:
        request.getfixturevalue("events_in_table")
    ws = factories.workspace()
    as_dict = make(ws.pk, "flow-run.state.submitted", resource("flow-run", "0c75defa-d5fe-425d-8fca-cee653dbe1bd"),
                   related=[resource("flow", 3)], payload={"from": "LATE", "to": "SUBMITTED", "message": "é ☃"})
    as_text = Encoded(json.dumps({**make(ws.pk, as_dict["name"], as_dict["resource"], related=as_dict["related"],
                                         payload=as_dict["payload"]), "occurred": as_dict["occurred"]}))
    if where == "with the change":
        with transaction.atomic():
            emit([as_dict, as_text])
            assert buffered() == (0, 2)
    else:
        emit([as_dict, as_text])
    if where == "redis refused":
        assert PendingEvent.objects.count() == 2
        with pytest.raises(redis.ConnectionError):  # the pass stores the table's rows, then fails on the stream
            persister.run_once()
    else:
        drain()
    stored = {str(event.id): event for event in Event.objects.all()}
    assert set(stored) == {as_dict["id"], json.loads(as_text)["id"]}
    first, second = stored[as_dict["id"]], stored[json.loads(as_text)["id"]]
    fields = ("workspace_id", "name", "occurred", "resource", "related", "payload")
    assert [getattr(second, f) for f in fields] == [getattr(first, f) for f in fields]
    assert first.payload["message"] == "é ☃"
