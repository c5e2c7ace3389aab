"""The sender thread: with Redis, committed events leave from the background, batched."""

import socket
import threading
import time

import pytest

from events import buffer, sender as sender_module
from events.emit import emit
from events.models import Event, PendingEvent
from events.sender import Sender
from runs.models import Actor, State
from runs.states import set_flow_run_state
from tests import factories
from tests.events.conftest import buffered, drain, tick

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def in_background(settings, monkeypatch):
    """A sender of the test's own, on (the suite sends in the committing thread)."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_SEND_IN_BACKGROUND": True}
    own = Sender()
    monkeypatch.setattr(sender_module, "sender", own)
    yield own
    assert own.wait(10)


def test_committed_events_reach_the_stream_from_the_sender_thread(events_in_redis, in_background):
    ws = factories.workspace()
    run = factories.flow_run(factories.flow(ws), state=State.RUNNING)
    set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    assert in_background.wait(10)
    assert buffered() == (1, 0)
    drain()
    assert Event.objects.get().name == "flow-run.state.completed"


def test_many_commits_go_in_fewer_pipelines(events_in_redis, in_background, monkeypatch):
    calls = []
    real_push = buffer.push

    def counted(events):
        calls.append(len(events))
        time.sleep(0.01)  # a slow Redis: commits pile up behind the first pipeline
        return real_push(events)

    monkeypatch.setattr(buffer, "push", counted)
    ws = factories.workspace()
    for i in range(200):
        emit([tick(ws.pk, i)])
    assert in_background.wait(10)
    assert sum(calls) == 200 and len(calls) < 100, calls
    drain()
    assert Event.objects.count() == 200


def test_a_frozen_redis_costs_the_change_no_wait_at_all(settings, in_background):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    settings.REDIS_URL = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_REDIS_TIMEOUT_SECONDS": 0.5}
    buffer.reset()
    try:
        ws = factories.workspace()
        runs = [factories.flow_run(factories.flow(ws), state=State.RUNNING) for _ in range(5)]
        started = time.perf_counter()
        for run in runs:
            set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
        assert time.perf_counter() - started < 0.4, "a change waited for Redis"
        assert in_background.wait(10)
        assert PendingEvent.objects.count() == 5  # the thread timed out once, then used the table
    finally:
        server.close()
        buffer.reset()


def test_a_full_queue_sends_in_the_caller(events_in_redis, settings, monkeypatch):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_SEND_IN_BACKGROUND": True}
    monkeypatch.setattr(sender_module, "QUEUE_BATCHES", 1)
    own = Sender()
    monkeypatch.setattr(sender_module, "sender", own)
    gate = threading.Event()
    real_push = buffer.push

    def held(events):
        gate.wait(10)
        return real_push(events)

    monkeypatch.setattr(buffer, "push", held)
    ws = factories.workspace()
    emit([tick(ws.pk, 1)])  # taken by the thread, which waits at the gate
    time.sleep(0.2)
    emit([tick(ws.pk, 2)])  # queued
    monkeypatch.setattr(buffer, "push", real_push)
    emit([tick(ws.pk, 3)])  # the queue is full: sent here, at once
    assert buffer.stream_length() == 1
    gate.set()
    assert own.wait(10)
    drain()
    assert sorted(e.payload["i"] for e in Event.objects.all()) == [1, 2, 3]
