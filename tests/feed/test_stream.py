"""The event stream: server-sent events read forward by (received, id), resumable, bounded in time."""

import time
import uuid
from datetime import timedelta

import pytest
from django.test import AsyncRequestFactory
from django.utils import timezone

from events import filters, stream
from events.models import Event
from runs.models import Role
from tests import factories

from .helpers import event, parse_sse

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_stream(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_STREAM_POLL_SECONDS": 0.01,
                             "EVENTS_STREAM_MAX_SECONDS": 0.3, "EVENTS_STREAM_HEARTBEAT_SECONDS": 0.05}


@pytest.fixture
def viewer_api(api, key_for):
    return api.as_key(key_for(Role.VIEWER))


def read_all(response):
    return parse_sse(b"".join(response.streaming_content).decode())


def events_of(messages):
    return [m for m in messages if "event" in m]


def test_the_stream_sends_what_is_stored_after_it_opens_in_order(viewer_api, prefix, ws, other_ws):
    event(ws, "before.opening", received=timezone.now() - timedelta(seconds=5))
    response = viewer_api.get(f"{prefix}/events/stream", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    chunks = iter(response.streaming_content)
    opening = parse_sse(next(chunks).decode())[0]
    assert opening[":"] == ["connected"] and "|" in opening["id"]
    # One persister batch: the same `received` for all, so only the id orders them.
    batch_moment = timezone.now() + timedelta(milliseconds=1)
    made = [event(ws, f"flow-run.state.n{i}", rid=f"run-{i}", received=batch_moment) for i in range(5)]
    event(other_ws, "flow-run.state.elsewhere", received=batch_moment)
    rest = parse_sse(b"".join(chunks).decode())
    sent = events_of(rest)
    assert [m["data"]["id"] for m in sent] == sorted(str(e.pk) for e in made)
    first = sent[0]
    assert first["event"] == first["data"]["name"] and first["data"]["resource"]["kind"] == "flow-run"
    assert first["id"] == filters.cursor_text(batch_moment, uuid.UUID(first["data"]["id"]))
    # It ends by telling the client when to come back.
    assert rest[-1]["retry"] == "10" and rest[-1][":"] == ["reconnect"]


def test_last_event_id_resumes_after_that_event_without_loss_or_repeat(viewer_api, prefix, ws):
    moment = timezone.now() - timedelta(minutes=1)
    made = sorted((event(ws, f"e.{i}", received=moment) for i in range(6)), key=lambda e: e.pk)
    later = event(ws, "e.later", received=moment + timedelta(seconds=1))
    cursor = filters.cursor_text(moment, made[2].pk)
    messages = read_all(viewer_api.get(f"{prefix}/events/stream", HTTP_LAST_EVENT_ID=cursor))
    assert [m["data"]["id"] for m in events_of(messages)] == [str(e.pk) for e in made[3:]] + [str(later.pk)]
    # The parameter does the same for clients that cannot set headers (a browser's first connect).
    messages = read_all(viewer_api.get(f"{prefix}/events/stream", {"last_event_id": cursor}))
    assert len(events_of(messages)) == 4


def test_the_stream_takes_the_lists_filters(viewer_api, prefix, ws):
    moment = timezone.now() - timedelta(minutes=1)
    event(ws, "flow-run.state.crashed", rid="a", received=moment)
    event(ws, "flow-run.heartbeat", rid="a", received=moment)
    event(ws, "task-run.state.failed", kind="task-run", rid="t", related=[("flow-run", "a")], received=moment)
    event(ws, "flow-run.state.crashed", rid="b", received=moment)
    start = filters.cursor_text(moment - timedelta(seconds=1), uuid.UUID(int=0))
    messages = read_all(viewer_api.get(f"{prefix}/events/stream", {"last_event_id": start, "about": "a",
                                                                  "name": "*.state.*"}))
    assert sorted(m["event"] for m in events_of(messages)) == ["flow-run.state.crashed", "task-run.state.failed"]


def test_a_quiet_stream_sends_keep_alive_comments_and_ends_in_time(viewer_api, prefix, ws):
    started = time.monotonic()
    messages = read_all(viewer_api.get(f"{prefix}/events/stream"))
    assert time.monotonic() - started < 2
    assert not events_of(messages)
    assert sum(1 for m in messages if m.get(":") == ["keep-alive"]) >= 2


def test_a_burst_bigger_than_a_batch_is_read_at_once_in_batches(viewer_api, prefix, ws, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_STREAM_BATCH_SIZE": 7}
    moment = timezone.now() - timedelta(minutes=1)
    for i in range(30):
        event(ws, f"e.{i}", received=moment + timedelta(microseconds=i % 4))
    start = filters.cursor_text(moment - timedelta(seconds=1), uuid.UUID(int=0))
    messages = read_all(viewer_api.get(f"{prefix}/events/stream", {"last_event_id": start}))
    ids = [m["data"]["id"] for m in events_of(messages)]
    assert len(ids) == len(set(ids)) == 30


@pytest.mark.parametrize("headers, query, field", [
    ({"HTTP_LAST_EVENT_ID": "yesterday"}, {}, "Last-Event-ID"),
    ({"HTTP_LAST_EVENT_ID": "2026-01-01T00:00:00|not-a-uuid"}, {}, "Last-Event-ID"),
    ({}, {"last_event_id": "2026-01-01T00:00:00+00:00"}, "last_event_id"),
    ({}, {"name": "no spaces"}, "name"),
    ({}, {"since": "soon"}, "since"),
])
def test_bad_cursors_and_filters_are_a_400_naming_the_field(viewer_api, prefix, headers, query, field):
    answer = viewer_api.get(f"{prefix}/events/stream", query, HTTP_ACCEPT="text/event-stream", **headers)
    assert answer.status_code == 400
    assert answer["Content-Type"] == "application/json" and field in answer.json()["error"]["fields"]


def test_who_may_stream(api, key_for, prefix, other_ws):
    from tests.conftest import api_prefix

    assert api.get(f"{prefix}/events/stream").status_code == 401
    assert api.as_key(key_for(Role.AGENT)).get(f"{prefix}/events/stream").status_code == 403
    assert api.as_key(key_for(Role.VIEWER)).get(f"{api_prefix(other_ws)}/events/stream").status_code == 404


def test_a_session_may_stream(client, ws, prefix):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    response = client.get(f"{prefix}/events/stream")
    assert response.status_code == 200 and response.streaming


def test_under_asgi_the_stream_is_an_async_iterator_sent_as_it_comes(ws):
    import asyncio
    import threading

    made = Event(workspace=ws, name="flow-run.state.crashed", resource={"kind": "flow-run", "id": "r"},
                 occurred=timezone.now(), received=timezone.now())

    class OneEvent(stream.EventStream):
        """No database here: the test runs the loop in a thread of its own (a browser test may
        have left an event loop in this one), which would not see the test's transaction."""

        def read(self):
            rows, self.rows = getattr(self, "rows", [made]), []
            return rows

    response = stream.response_for(AsyncRequestFactory().get("/"), OneEvent(Event.objects.none()))
    assert response.is_async

    async def first_two():
        parts = []
        async for part in response.streaming_content:
            parts.append(part)
            if len(parts) == 2:
                break
        return parts

    result = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(first_two())))
    thread.start()
    thread.join(10)
    opening, message = result[0]
    assert b"connected" in opening and str(made.pk).encode() in message and b"event: flow-run.state.crashed" in message


@pytest.mark.django_db(transaction=True)
def test_between_reads_the_stream_holds_no_connection(ws, monkeypatch):
    from django.db import connections

    conn = connections["default"]
    closed = []
    real_close = conn.close
    monkeypatch.setattr(conn, "close", lambda: (closed.append(1), real_close()))
    reader = stream.EventStream(Event.objects.filter(workspace=ws))
    assert not conn.in_atomic_block
    reader.read()
    assert closed == [1]
    assert conn.connection is None
    event(ws, "e.1", received=timezone.now() + timedelta(seconds=1))
    assert [e.name for e in reader.read()] == ["e.1"] and closed == [1, 1]


def test_inside_a_transaction_the_stream_keeps_its_connection(ws, monkeypatch):
    from django.db import connections

    closed = []
    monkeypatch.setattr(connections["default"], "close", lambda: closed.append(1))
    stream.EventStream(Event.objects.filter(workspace=ws)).read()
    assert closed == []


def test_the_dashboard_stream_sends_one_changed_message_per_read_for_a_burst(as_viewer, ws, other_ws):
    response = as_viewer.get("/dashboard/events/stream", {"name": "flow-run."})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    chunks = iter(response.streaming_content)
    next(chunks)
    moment = timezone.now() + timedelta(milliseconds=1)
    for i in range(50):
        event(ws, f"flow-run.state.s{i % 3}", received=moment)
    event(ws, "agent.online", kind="agent", received=moment)  # filtered out
    event(other_ws, "flow-run.state.crashed", received=moment)  # not the user's workspace
    changed = [m for m in parse_sse(b"".join(chunks).decode()) if m.get("event") == "changed"]
    assert len(changed) == 1
    assert changed[0]["data"]["count"] == 50
    assert sorted(changed[0]["data"]["names"]) == ["flow-run.state.s0", "flow-run.state.s1", "flow-run.state.s2"]


def test_the_dashboard_stream_needs_a_session_and_good_filters(as_viewer):
    from django.test import Client

    assert Client().get("/dashboard/events/stream").status_code == 403
    answer = as_viewer.get("/dashboard/events/stream", {"last_event_id": "nope"})
    assert answer.status_code == 400 and "last_event_id" in answer.json()["error"]["fields"]


def test_a_coalesced_stream_sends_one_message_for_a_burst_bigger_than_a_batch_at_most_once_a_second(ws, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_STREAM_BATCH_SIZE": 10,
                             "EVENTS_STREAM_MAX_SECONDS": 2.5}
    moment = timezone.now() - timedelta(minutes=1)
    reader = stream.EventStream(Event.objects.filter(workspace=ws), (moment, uuid.UUID(int=0)), coalesce=True)
    assert reader.poll_seconds == 1.0
    chunks = iter(reader)
    next(chunks)
    for i in range(35):
        event(ws, f"e.{i}", received=moment + timedelta(microseconds=i))
    started = time.monotonic()
    first = parse_sse(next(chunks).decode())
    assert [m["data"]["count"] for m in first if m.get("event") == "changed"] == [35]
    for i in range(3):
        event(ws, f"f.{i}", received=moment + timedelta(seconds=1))
    second = parse_sse(next(chunks).decode())
    assert time.monotonic() - started >= 0.9  # not before a second has passed
    assert [m["data"]["count"] for m in second if m.get("event") == "changed"] == [3]
