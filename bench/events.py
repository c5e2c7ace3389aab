"""Events: what emitting costs a state change, and how fast the persister empties the buffer.

1. The same number of transitions (`set_flow_run_state` RUNNING → COMPLETED on fresh runs, one
   transaction each) with ORCHESTRATOR EVENTS_ENABLED off and on, in small alternating chunks so
   that drift on a shared machine hits both alike (aim: on within 10 % of off). With REDIS_URL
   the events go to the stream (from the sender thread, events/sender.py, whose wait at the end
   of each chunk is timed too), else to the PendingEvent table.
2. Persister passes over BENCH_EVENTS (default 50,000) buffered events, beside a raw `COPY` of the
   same rows into a scratch table with the same columns, primary key and indexes (PostgreSQL).

The bench's events go to a stream of its own, deleted afterwards, never a running server's.
`BENCH_TRANSITIONS` (default 2,000 each way) changes the size.
"""

import json
import os
import time
import uuid

from django.conf import settings
from django.db import connection
from django.utils import timezone

from events import buffer, persister
from events import emit
from events.emit import make, resource
from events.models import Event, PendingEvent
from events.sender import sender
from runs.models import Actor, FlowRun, State
from runs.states import set_flow_run_state
from tests import factories

COLUMNS = ["id", "workspace_id", "occurred", "received", "name", "resource", "related", "payload"]


def _fresh_runs(flow, count):
    now, version = timezone.now(), flow.latest_version
    made = FlowRun.objects.bulk_create([
        FlowRun(workspace=flow.workspace, flow=flow, flow_version=version, state=State.RUNNING,
                scheduled_start=now, start_time=now, name=f"bench-events-{i}") for i in range(count)], batch_size=1000)
    return list(FlowRun.objects.filter(pk__in=[run.pk for run in made]))


def _transitions(runs, enabled):
    settings.ORCHESTRATOR["EVENTS_ENABLED"] = enabled
    started = time.perf_counter()
    for run in runs:
        set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    sender.wait()  # what the sender thread still holds counts too
    return time.perf_counter() - started


def _empty_buffer():
    PendingEvent.objects.all().delete()
    if buffer.redis_client() is not None:
        buffer.redis_client().delete(buffer.stream_key())


def _empty_events():
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE events_event" if connection.vendor == "postgresql" else "DELETE FROM events_event")


def bench_transitions(table, flow):
    count = int(os.environ.get("BENCH_TRANSITIONS", "2000"))
    chunk = 50
    _transitions(_fresh_runs(flow, 200), True)  # warm-up: connections, caches, the stream and its group
    _transitions(_fresh_runs(flow, 200), False)
    _empty_buffer()
    runs = _fresh_runs(flow, 2 * count)
    seconds = {False: 0.0, True: 0.0}
    # The time spent handing events to the buffer, measured directly: the part of the difference
    # that is the events' own, whatever the machine's noise does to the two totals.
    pushing = [0.0]
    real_push = buffer.push

    def timed_push(events):
        started = time.perf_counter()
        try:
            return real_push(events)
        finally:
            pushing[0] += time.perf_counter() - started

    buffer.push = timed_push
    try:
        # Small alternating chunks (off, on, on, off, …): on a shared machine the database's speed
        # drifts by tens of percent within seconds, and both modes must meet the same drift.
        for i, start in enumerate(range(0, 2 * count, 2 * chunk)):
            first = bool(i % 2)
            seconds[first] += _transitions(runs[start:start + chunk], first)
            seconds[not first] += _transitions(runs[start + chunk:start + 2 * chunk], not first)
    finally:
        buffer.push = real_push
    buffered = buffer.stream_length() + PendingEvent.objects.count()
    assert buffered == count, f"events on: {count} transitions buffered {buffered} events"
    _empty_buffer()
    where = "Redis stream" if buffer.redis_client() is not None else "PendingEvent table"
    off, on = seconds[False], seconds[True]
    how = "sender thread" if emit.background() else "in the commit"
    table.add(f"state transitions with events on ({count:,} RUNNING → COMPLETED, to the {where}, {how})",
              f"{count / on:,.0f}/s ({on * 1000 / count:.2f} ms each; buffering "
              f"{pushing[0] * 1000 / count:.2f} ms an event)",
              f"events off {count / off:,.0f}/s ({off * 1000 / count:.2f} ms each)",
              f"{on / off:.3f}", "≤ 1.10")


def _buffer_events(ws, count):
    occurred = timezone.now()
    events = [make(ws.pk, "flow-run.state.completed", resource("flow-run", uuid.uuid4()),
                   related=[resource("flow", 1), resource("work-queue", 2)],
                   payload={"from": "RUNNING", "to": "COMPLETED", "message": "", "actor": "agent"}, occurred=occurred)
              for _ in range(count)]
    for start in range(0, count, 1000):
        buffer.push(events[start:start + 1000])
    return events


def _copy_rows():
    """The stored events as COPY text values, prepared before any clock starts."""
    rows = []
    for row in Event.objects.order_by().values_list(*COLUMNS):
        rows.append([str(row[0]), row[1], row[2], row[3], row[4], json.dumps(row[5]), json.dumps(row[6]),
                     json.dumps(row[7])])
    return rows


def _raw_copy(rows):
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_events_copy")
        cursor.execute("CREATE TABLE bench_events_copy (LIKE events_event INCLUDING ALL)")
        raw = cursor.cursor  # psycopg's own cursor: Django's has no copy()
        started = time.perf_counter()
        with raw.copy(f"COPY bench_events_copy ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        seconds = time.perf_counter() - started
        cursor.execute("SELECT count(*) FROM bench_events_copy")
        copied = cursor.fetchone()[0]
        cursor.execute("DROP TABLE bench_events_copy")
    assert copied == len(rows), (copied, len(rows))
    return seconds


def bench_persister(table, ws):
    count = int(os.environ.get("BENCH_EVENTS", "50000"))
    _empty_events()
    _empty_buffer()
    _buffer_events(ws, count)
    source = "Redis stream" if buffer.redis_client() is not None else "PendingEvent table"
    started = time.perf_counter()
    stored = passes = 0
    while stored < count:
        summary = persister.run_once(timezone.now())
        stored += summary["stored"]
        passes += 1
        assert summary["stored"] or passes < 1000, "the persister stopped storing"
    seconds = time.perf_counter() - started
    assert Event.objects.count() == count and buffer.stream_length() + PendingEvent.objects.count() == 0
    rate = count / seconds
    if connection.vendor != "postgresql":
        table.add(f"persister: {count:,} buffered events ({source}, {passes} passes)", f"{rate:,.0f} events/s",
                  "raw COPY: PostgreSQL only", "", "")
        return
    rows = _copy_rows()
    copy_seconds = _raw_copy(rows)
    copy_rate = count / copy_seconds
    table.add(f"persister: {count:,} buffered events ({source}, {passes} passes)",
              f"{rate:,.0f} events/s ({seconds:.2f} s)", f"raw COPY {copy_rate:,.0f} rows/s ({copy_seconds:.2f} s)",
              f"{rate / copy_rate:.2f}", "≥ 10,000 events/s")


def run(table):
    saved = dict(settings.ORCHESTRATOR)
    settings.ORCHESTRATOR["EVENTS_STREAM_KEY"] = f"orchestrator:bench-events:{uuid.uuid4().hex}"
    buffer.reset()
    try:
        ws = factories.workspace()
        flow = factories.flow(ws)
        bench_transitions(table, flow)
        bench_persister(table, ws)
    finally:
        _empty_buffer()
        settings.ORCHESTRATOR.clear()
        settings.ORCHESTRATOR.update(saved)
        buffer.reset()
