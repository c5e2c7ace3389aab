"""Server-sent events: a workspace's events as they are stored, to the API and to the dashboard.

`EventStream` reads the Event table every EVENTS_STREAM_POLL_SECONDS by keyset on (received, id),
the order the persister stores events in (one `received` per batch, batches one after another
under Towel's lock), so an event is sent once, also when many share a `received`. Each event is
an SSE message:

    id: 2026-11-29T10:00:01.123456+00:00|6c1f…      (the cursor: resume after this event)
    event: flow-run.state.crashed
    data: {"id": "6c1f…", "occurred": …, "name": …, "resource": …, "related": […], "payload": {…}}

A client resumes with the `Last-Event-ID` header (browsers send it when they reconnect) or the
`last_event_id` parameter; without either the stream starts at the moment it opens. Quiet, it
sends a comment every EVENTS_STREAM_HEARTBEAT_SECONDS (proxies keep the connection). After
EVENTS_STREAM_MAX_SECONDS it ends with a `retry:` hint and the client reconnects where it was,
so no web worker is held for ever. Between reads it holds no transaction and, outside a test's
transaction, no database connection: idle streams must not use up PostgreSQL's connections.

`coalesce=True` (the dashboard) sends one `changed` message per read that found events instead
of one message per event, and reads at most once a second: a page only needs to know that it
should refresh, at most once a second, however many events a burst brings.

Under WSGI (gunicorn, the test client) the response iterates synchronously; under ASGI (uvicorn)
it must be an async iterator, or Django would read the whole stream into memory before sending
it: `response_for(request, stream)` picks the right one.
"""

import asyncio
import itertools
import json
import threading
import time
import uuid

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import StreamingHttpResponse
from django.utils import timezone

from events import filters

CONTENT_TYPE = "text/event-stream"
# The dashboard's coalesced stream: at most one message per this many seconds, and per message at
# most this many reads of a batch (a bigger burst is the next message's).
COALESCED_MIN_SECONDS = 1.0
COALESCED_MAX_READS = 20


def _config(key):
    return settings.ORCHESTRATOR[key]


# The streams this process is sending now (ids): how many are open, and a way for tests to wait
# until the streams of a closed browser page have ended before the next test uses the database.
_open = set()
_open_lock = threading.Lock()
_ids = itertools.count()


def open_streams():
    """How many streams this process is sending now."""
    with _open_lock:
        return len(_open)


def _line(text):
    """A value on one SSE line: the protocol ends a field at a line break."""
    return str(text).replace("\r", " ").replace("\n", " ")


class EventStream:
    """The messages of a stream of `queryset` (Event rows, already scoped and filtered) after `cursor`."""

    def __init__(self, queryset, cursor=None, *, coalesce=False, clock=time.monotonic):
        self.queryset = queryset
        # Without a cursor: what is stored from now on (an id below every uuid breaks the tie).
        self.cursor = cursor or (timezone.now(), uuid.UUID(int=0))
        self.coalesce = coalesce
        self.clock = clock
        self.poll_seconds = _config("EVENTS_STREAM_POLL_SECONDS")
        if coalesce:
            # A page refreshes at most once a second, whatever the read interval is set to.
            self.poll_seconds = max(self.poll_seconds, COALESCED_MIN_SECONDS)
        self.batch_size = _config("EVENTS_STREAM_BATCH_SIZE")
        self.heartbeat_seconds = _config("EVENTS_STREAM_HEARTBEAT_SECONDS")
        self.max_seconds = _config("EVENTS_STREAM_MAX_SECONDS")

    # --- one read ---

    def read(self):
        """The next events after the cursor (at most a batch), moving the cursor past them."""
        try:
            rows = list(filters.after(self.queryset, *self.cursor).order_by("received", "id")[: self.batch_size])
        finally:
            # Outside a transaction (always, but in a test) give the connection back between reads.
            if not connection.in_atomic_block:
                connection.close()
        if rows:
            self.cursor = (rows[-1].received, rows[-1].id)
        return rows

    def cursor_id(self):
        return filters.cursor_text(*self.cursor)

    def messages(self, rows):
        if not rows:
            return ""
        if self.coalesce:
            names = list(dict.fromkeys(row.name for row in rows))[:20]
            return (f"id: {self.cursor_id()}\nevent: changed\n"
                    f"data: {json.dumps({'count': len(rows), 'names': names})}\n\n")
        return "".join(f"id: {filters.cursor_text(row.received, row.id)}\nevent: {_line(row.name)}\n"
                       f"data: {json.dumps(row.as_dict(), separators=(',', ':'))}\n\n" for row in rows)

    def opening(self):
        # An id with no data sets the client's last event id without an event: a client that
        # reconnects before any event came resumes from here, not from its first URL's start.
        return f": connected\nid: {self.cursor_id()}\n\n"

    def closing(self):
        return f": reconnect\nretry: {int(self.poll_seconds * 1000)}\n\n"

    # --- the loop, synchronous and asynchronous ---

    def _steps(self):
        """The loop as (text to send, seconds to wait before the next step); None ends it."""
        key = next(_ids)
        with _open_lock:
            _open.add(key)
        try:
            yield from self._loop()
        finally:
            with _open_lock:
                _open.discard(key)

    def _loop(self):
        started = last_sent = self.clock()
        yield self.opening(), 0
        while True:
            rows = self.read()
            if self.coalesce:
                # A burst bigger than a batch is still one message: read on (boundedly) first.
                for _ in range(COALESCED_MAX_READS):
                    if len(rows) % self.batch_size or not rows:
                        break
                    more = self.read()
                    if not more:
                        break
                    rows += more
            text = self.messages(rows)
            now = self.clock()
            if text:
                last_sent = now
            elif now - last_sent >= self.heartbeat_seconds:
                text, last_sent = ": keep-alive\n\n", now
            if now - started >= self.max_seconds:
                yield text + self.closing(), None
                return
            # A full batch (not coalesced): more are waiting, read again at once.
            full = len(rows) == self.batch_size and not self.coalesce
            wait = 0 if full else min(self.poll_seconds, self.max_seconds - (now - started))
            yield text, wait

    def __iter__(self):
        steps = self._steps()
        try:
            for text, wait in steps:
                if text:
                    yield text.encode()
                if wait is None:
                    return
                if wait:
                    time.sleep(wait)
        finally:
            steps.close()  # the client went away (the server closed the response): the stream ends now

    async def __aiter__(self):
        # Each step's read runs in the request's thread for sync code (thread_sensitive), so the
        # connection it opens and closes is that thread's.
        steps = self._steps()
        step = sync_to_async(lambda: next(steps, (None, None)), thread_sensitive=True)
        try:
            while True:
                text, wait = await step()
                if text:
                    yield text.encode()
                if wait is None:
                    return
                if wait:
                    await asyncio.sleep(wait)
        finally:
            await sync_to_async(steps.close, thread_sensitive=True)()


class _AsyncOnly:
    """The async half of an EventStream: StreamingHttpResponse treats anything with __iter__ as sync."""

    def __init__(self, stream):
        self.stream = stream

    def __aiter__(self):
        return self.stream.__aiter__()


def response_for(request, stream):
    """The streaming response of `stream`, async under ASGI, sync under WSGI."""
    content = _AsyncOnly(stream) if isinstance(request, ASGIRequest) else iter(stream)
    response = StreamingHttpResponse(content, content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each message on at once
    return response


def start_cursor(request, param="last_event_id"):
    """Where a stream resumes: the `Last-Event-ID` header, else the `last_event_id` parameter, else
    None (now). Raises BadFilter naming the one that is not a cursor."""
    header = request.META.get("HTTP_LAST_EVENT_ID", "").strip()
    if header:
        return filters.parse_cursor(header, "Last-Event-ID")
    raw = (request.GET.get(param) or "").strip()
    return filters.parse_cursor(raw, param) if raw else None
