"""Writing auto-scheduled runs fast and exactly once: INSERT … ON CONFLICT DO NOTHING, executemany.

The scheduler creates tens of thousands of rows per pass. Building a model instance per row and
letting `bulk_create` prepare each field costs more than the insert itself, so each schedule's
constant columns are prepared once and every run only adds its id, name and start time.
The partial unique constraint (flow, schedule slug, slot) where auto_scheduled makes
two copies of the scheduler inserting the same run harmless: the second insert does nothing.
"""

import uuid
from collections import deque
from datetime import timedelta

from django.db import connection, transaction

from runs.models import FlowRun, State

# Columns that change per run; the rest are the same for every run of one schedule.
PER_RUN = ("id", "name", "scheduled_start")
# Rows per transaction: few commits (each one waits for the disk), short-lived row locks.
ROWS_PER_TRANSACTION = 5_000


class ScheduledRunWriter:
    """Collects the runs of one pass and inserts them, returning how many rows were really new."""

    def __init__(self, now):
        self.now = now
        self.fields = list(FlowRun._meta.concrete_fields)
        self.columns = [f.column for f in self.fields]
        self.index = {f.attname: i for i, f in enumerate(self.fields)}
        template = FlowRun(state=State.SCHEDULED, auto_scheduled=True, state_changed=now, created=now, updated=now)
        # Columns no run of this pass changes are prepared for the database once.
        self.template = [f.get_db_prep_save(getattr(template, f.attname), connection) for f in self.fields]
        self.parameters_field = FlowRun._meta.get_field("parameters")
        self.rows = []

    def add(self, schedule, *, workspace_id, flow_version_id, work_queue_id, times):
        """Queue the runs of `schedule` at `times` (aware UTC datetimes)."""
        if not times:
            return
        base = self.template.copy()
        index = self.index
        for attname, value in (("workspace_id", workspace_id), ("flow_id", schedule.flow_id),
                               ("flow_version_id", flow_version_id), ("schedule_id", schedule.pk),
                               ("schedule_slug", schedule.slug), ("work_queue_id", work_queue_id)):
            base[index[attname]] = value  # ids and text need no preparing on any backend
        base[index["parameters"]] = self.parameters_field.get_db_prep_save(schedule.parameters, connection)
        i_id, i_name, i_start = (index[c] for c in PER_RUN)
        i_slot = index["slot"]
        native_uuid = connection.features.has_native_uuid_field
        adapt_time = connection.ops.adapt_datetimefield_value
        slug, rows = schedule.slug, self.rows
        for when in times:
            row = base.copy()
            run_id = uuid.uuid4()
            row[i_id] = run_id if native_uuid else run_id.hex
            row[i_name] = f"{slug}-{when:%Y%m%d-%H%M%S}"
            row[i_start] = row[i_slot] = adapt_time(when)  # due at its slot, which stays its identity
            rows.append(row)

    def insert(self):
        """Insert the collected rows, ignoring ones that already exist; returns the number inserted.

        One single-row statement run by executemany: the driver parses it once and streams the
        rows (psycopg pipelines them), which beats building multi-row VALUES text. Rows go in the
        order they were added, (schedule, time), so two copies lock conflicting rows in the same
        order and wait for each other instead of deadlocking.
        """
        if not self.rows:
            return 0
        table = connection.ops.quote_name(FlowRun._meta.db_table)
        columns = ", ".join(connection.ops.quote_name(c) for c in self.columns)
        placeholders = ", ".join(["%s"] * len(self.columns))
        sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) ON CONFLICT DO NOTHING"
        inserted = 0
        for start in range(0, len(self.rows), ROWS_PER_TRANSACTION):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, self.rows[start:start + ROWS_PER_TRANSACTION])
                inserted += cursor.rowcount
        self.rows = []
        return inserted


def missed_fire_times(schedule, since, now, limit):
    """The newest `limit` fire times in (since, now]: what catch-up creates after downtime or a resume.

    Looks back from `now` over a window that doubles until it holds `limit` fire times or reaches
    `since`, so a schedule that fires every second after a month of downtime costs `limit` times,
    not millions.
    """
    window = timedelta(hours=1)
    while True:
        start = max(since, now - window)
        newest = deque(maxlen=limit)
        after = start
        while True:
            chunk = schedule.next_fire_times(after, 256)
            newest.extend(t for t in chunk if t <= now)
            if not chunk or chunk[-1] > now:
                break
            after = chunk[-1]
        if len(newest) >= limit or start <= since:
            return list(newest)
        window *= 2
