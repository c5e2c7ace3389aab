"""Scheduler throughput: 10,000 active schedules → 100,000 runs, beside a raw INSERT of the same rows.

Order, so that both inserts meet the same empty table: a warm-up pass makes the rows, which are
read back and prepared; the table is emptied; the raw INSERT (executemany) of those rows is timed;
the table is emptied again; then `services.scheduler.run_once` is timed (first pass), and timed
again right after (second pass, which must create nothing). `BENCH_SCHEDULES` changes the size.
"""

import os
import time
from datetime import datetime, timedelta, timezone

from django.db import connection, transaction

from runs.models import Flow, FlowRun, FlowVersion, Schedule, ScheduleKind, Workspace
from runs.models.workspaces import Account
from runs.scheduled_runs import ROWS_PER_TRANSACTION
from services.scheduler import run_once

NOW = datetime(2026, 5, 4, 12, 0, 7, tzinfo=timezone.utc)
SCHEDULES_PER_FLOW = 10


def schedule_fields(i):
    """A mix like a real install: mostly intervals, some cron (5 and 6 fields), a few RRULEs."""
    if i % 10 < 7:
        return {"kind": ScheduleKind.INTERVAL, "interval_seconds": 60 * (1 + i % 120)}
    if i % 10 < 9:
        return {"kind": ScheduleKind.CRON, "cron": f"{i % 60} * * * *" if i % 2 else f"0 {i % 60} * * * *"}
    return {"kind": ScheduleKind.RRULE, "rrule": "DTSTART:20260101T000000\nRRULE:FREQ=HOURLY;BYMINUTE=15,45",
            "timezone": "Europe/London"}


def make_schedules(count):
    account = Account.objects.create(name="Bench", slug="bench-scheduler")
    ws = Workspace.objects.create(account=account, name="Bench", slug="bench-scheduler")
    flows = Flow.objects.bulk_create([Flow(workspace=ws, name=f"flow-{i}") for i in range(count // SCHEDULES_PER_FLOW)])
    FlowVersion.objects.bulk_create([FlowVersion(flow=f, entrypoint="bench:main", is_latest=True) for f in flows])
    Schedule.objects.bulk_create(
        [Schedule(flow=flows[i // SCHEDULES_PER_FLOW], slug=f"s{i % SCHEDULES_PER_FLOW}", parameters={"n": i},
                  **schedule_fields(i)) for i in range(count)],
        batch_size=2000,
    )
    # Imported a day before the measured pass, not edited since (a pass re-checks fresh edits).
    Schedule.objects.update(created=NOW - timedelta(days=1), updated=NOW - timedelta(days=1))


def empty_runs_table():
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {FlowRun._meta.db_table} CASCADE")
        else:
            cursor.execute(f"DELETE FROM {FlowRun._meta.db_table}")


def prepared_rows():
    """Every run in the table as the values a raw INSERT binds, prepared before any clock starts."""
    fields = FlowRun._meta.concrete_fields
    rows = FlowRun.objects.order_by("flow_id", "schedule_slug", "scheduled_start").values_list(
        *[f.attname for f in fields])
    return [f.column for f in fields], [[f.get_db_prep_save(v, connection) for f, v in zip(fields, row)]
                                        for row in rows]


def raw_insert(columns, rows):
    """The raw limit: a plain INSERT of prepared rows through the DB cursor's executemany, same batches."""
    table = connection.ops.quote_name(FlowRun._meta.db_table)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"
    for start in range(0, len(rows), ROWS_PER_TRANSACTION):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, rows[start:start + ROWS_PER_TRANSACTION])


def run(table):
    count = int(os.environ.get("BENCH_SCHEDULES", "10000"))
    empty_runs_table()  # the benchmarks before this one share the database and leave their runs
    make_schedules(count)
    expected = count * 10

    run_once(NOW)  # warm-up: makes the rows the raw insert will write
    columns, rows = prepared_rows()
    assert len(rows) == expected, (len(rows), expected)
    empty_runs_table()

    started = time.perf_counter()
    raw_insert(columns, rows)
    raw_seconds = time.perf_counter() - started
    empty_runs_table()

    started = time.perf_counter()
    first = run_once(NOW)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second = run_once(NOW)
    second_seconds = time.perf_counter() - started
    assert first["runs_created"] == expected and second["runs_created"] == 0, (first, second)

    scheduler_rate, raw_rate = expected / first_seconds, expected / raw_seconds
    table.add(f"scheduler: {count:,} active schedules → {expected:,} runs",
              f"{scheduler_rate:,.0f} runs/s ({first_seconds:.2f} s)",
              f"raw INSERT {raw_rate:,.0f} rows/s ({raw_seconds:.2f} s)",
              f"{scheduler_rate / raw_rate:.2f}", "≥ 20,000 runs/s; ratio ≥ 0.5")
    table.add("scheduler: second pass right after (creates nothing)", f"{second_seconds * 1000:.0f} ms",
              f"first pass {first_seconds * 1000:.0f} ms", f"{second_seconds / first_seconds:.3f}", "< 0.1")
