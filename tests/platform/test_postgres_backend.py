"""orchestrator/db/postgresql and DATABASE_PREPARED_STATEMENTS: timestamps read by psycopg's
compiled loader, exactly as Django's own reads them, and the hot paths' statements prepared on a
connection."""

import re
import zoneinfo
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import DataError, OperationalError, connection, connections
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.test import override_settings
from django.utils import timezone

from runs import hot_sql
from runs.models import Agent, FlowRun, State
from tests import factories
from tests.platform.test_deploy_settings import settings_of

pytestmark = pytest.mark.postgres

# Text PostgreSQL parses as timestamptz, and prints back in the session's UTC: offsets, fractions,
# the ends of Python's range, a leap day.
TIMESTAMPS = ["2026-12-07 20:15:00.123456+00", "2026-03-29 01:59:59.999999+02", "1999-12-31 23:59:59-12:30",
              "2024-02-29 12:00:00+05:45", "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00",
              "2026-12-07 20:15:00.5+14", "1970-01-01 00:00:00+00"]


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("the PostgreSQL backend")


def read(cursor, values):
    cursor.execute("SELECT " + ", ".join(["%s::timestamptz"] * len(values)), values)
    return cursor.fetchone()


@pytest.mark.django_db
def test_timestamps_are_read_by_psycopgs_loader_as_djangos_reads_them(postgres_only):
    from orchestrator.db.postgresql.base import UtcTimestampLoader

    connection.ensure_connection()
    assert connection.connection.adapters.get_loader(_timestamptz_oid(), 0) is UtcTimestampLoader  # 0: text
    with connection.cursor() as ours:
        fast = read(ours, TIMESTAMPS)
    with connection.cursor() as djangos:
        register_tzloader(dt_timezone.utc, djangos.cursor)  # Django's own loader, on this cursor only
        assert djangos.cursor.adapters.get_loader(_timestamptz_oid(), 0) is not UtcTimestampLoader
        slow = read(djangos, TIMESTAMPS)
    assert fast == slow
    assert all(value.tzinfo is dt_timezone.utc for value in fast)
    assert [value.isoformat() for value in fast] == [value.isoformat() for value in slow]
    assert fast[1] == datetime(2026, 3, 28, 23, 59, 59, 999999, tzinfo=dt_timezone.utc)
    assert fast[2] == datetime(2000, 1, 1, 12, 29, 59, tzinfo=dt_timezone.utc)
    for beyond in ("0044-03-15 12:00:00+00 BC", "infinity", "-infinity"):  # no datetime: an error from both
        for register in (lambda cursor: None, lambda cursor: register_tzloader(dt_timezone.utc, cursor.cursor)):
            with connection.cursor() as cursor:
                register(cursor)
                with pytest.raises(DataError):
                    read(cursor, [beyond])


@pytest.mark.django_db
def test_a_null_and_the_orm_and_the_hot_sql_read_the_same_timestamps(postgres_only):
    run = factories.flow_run(factories.flow(factories.workspace()), state=State.RUNNING,
                             start_time=timezone.now() - timedelta(seconds=3, microseconds=7))
    loaded = FlowRun.objects.get(pk=run.pk)
    found, _names = hot_sql.run_to_change(run.pk, run.workspace_id)
    for field in FlowRun._meta.concrete_fields:
        assert getattr(found, field.attname) == getattr(loaded, field.attname), field.name
    assert loaded.end_time is None and loaded.start_time == run.start_time
    assert loaded.start_time.tzinfo is dt_timezone.utc


@pytest.mark.django_db
def test_a_database_time_zone_other_than_utc_keeps_djangos_loader(postgres_only):
    """DATABASES' TIME_ZONE makes Django read timestamps in that zone: then its own loader does."""
    other = new_connection("tokyo", TIME_ZONE="Asia/Tokyo")
    try:
        with other.cursor() as cursor:
            value = read(cursor, ["2026-12-07 20:15:00+00"])[0]
        assert other.connection.adapters.get_loader(_timestamptz_oid(), 0).timezone == zoneinfo.ZoneInfo("Asia/Tokyo")
        assert value.tzinfo == zoneinfo.ZoneInfo("Asia/Tokyo")
        assert value == datetime(2026, 12, 7, 20, 15, tzinfo=dt_timezone.utc)
    finally:
        other.close()


@pytest.mark.django_db
def test_a_cursor_made_while_django_reads_another_zone_uses_djangos_loader(postgres_only):
    """Django compares its time zone with the connection's loader's on each cursor (a test's
    override of USE_TZ or of the database's zone): ours says UTC, so a cursor in another registers
    Django's loader for itself."""
    connection.ensure_connection()
    with override_settings(USE_TZ=False):
        with connection.cursor() as cursor:
            value = read(cursor, ["2026-12-07 20:15:00+00"])[0]
    assert value.tzinfo is None and value == datetime(2026, 12, 7, 20, 15)


def _timestamptz_oid():
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID

    return TIMESTAMPTZ_OID


def new_connection(alias, **changes):
    """A connection of its own to the test database, its settings the default's with `changes`."""
    return type(connections["default"])({**connection.settings_dict, **changes}, alias=alias)


def numbered(sql):
    """`sql` with its placeholders as PostgreSQL numbers them in a prepared statement ($1, $2, …)."""
    numbers = iter(range(1, sql.count("%s") + 1))
    return re.sub("%s", lambda match: f"${next(numbers)}", sql)


def prepared_statements(db):
    with db.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def own_connection(monkeypatch, **options):
    """A connection of its own, which runs/hot_sql.py uses (and which no test's transaction holds)."""
    db = new_connection("default", OPTIONS={**connection.settings_dict["OPTIONS"], **options})
    monkeypatch.setattr(hot_sql, "connections", {"default": db})
    return db


@pytest.mark.django_db(transaction=True)
def test_the_hot_paths_statements_are_prepared_at_their_first_run_and_djangos_never(postgres_only, monkeypatch):
    """At once, not after a count of runs: psycopg counts the runs of at most 100 statements per
    connection, and Django's statements, each a new text (their parameters quoted into it), would
    push a hot statement out of that count before it was ever prepared."""
    run = factories.flow_run(factories.flow(factories.workspace()), state=State.RUNNING)
    assert connection.settings_dict["OPTIONS"]["prepare_threshold"] == 0  # DATABASE_PREPARED_STATEMENTS's default
    db = own_connection(monkeypatch)
    try:
        for i in range(150):
            with db.cursor() as cursor:  # Django's cursor: its parameters quoted into the text
                cursor.execute("SELECT 1 FROM runs_flowrun WHERE id = %s AND name <> %s", [run.pk, f"n{i}"])
        assert prepared_statements(db) == []
        assert hot_sql.run_to_change(run.pk, run.workspace_id)[0].pk == run.pk
        assert hot_sql.poll_snapshot(0, run.workspace_id, timezone.now(), timezone.now()) is None
        statements = prepared_statements(db)
        assert len(statements) == 2 and numbered(hot_sql._run_to_change_sql("postgresql")) in statements
    finally:
        db.close()


@pytest.mark.django_db(transaction=True)
def test_with_prepared_statements_off_nothing_is_prepared(postgres_only, monkeypatch):
    run = factories.flow_run(factories.flow(factories.workspace()), state=State.RUNNING)
    db = own_connection(monkeypatch, prepare_threshold=None)
    try:
        for _ in range(8):
            assert hot_sql.run_to_change(run.pk, run.workspace_id)[0].pk == run.pk
        assert prepared_statements(db) == []
    finally:
        db.close()


@pytest.mark.django_db
def test_a_state_change_with_its_statements_prepared_writes_nulls_and_long_messages(postgres_only):
    """The move's statement has its parameters bound by the server, and is prepared: NULLs of every
    kind, and a message longer than any varchar, stored as given every time."""
    from runs.models import Actor, StateChange
    from runs.states import set_flow_run_state

    message = "é" * 5000
    for i in range(3):
        run = factories.flow_run(factories.flow(factories.workspace()), state=State.RUNNING)
        moved, history = set_flow_run_state(run, State.FAILED, actor=Actor.USER, message=message, history=True)
        assert moved.state == State.FAILED and history[-1]["message"] == message and history[-1]["user"] is None
        change = StateChange.objects.get(flow_run=run, to_state=State.FAILED)
        assert (change.task_run_id, change.user_id, change.agent_id, change.message) == (None, None, None, message)
    assert any(statement.startswith("WITH moved AS (UPDATE") for statement in prepared_statements(connection))


@pytest.mark.django_db
def test_a_listed_state_change_in_one_statement_is_prepared_and_stores_what_it_is_given(postgres_only):
    """set_listed_flow_run_state's one statement: prepared, its history row's run and from-state
    taken from the row, NULLs and a message longer than any varchar stored as given, a person named."""
    from runs.models import Actor, StateChange
    from runs.states import set_listed_flow_run_state

    message, person = "é" * 5000, factories.member(factories.workspace())
    for i, (from_state, user) in enumerate([(State.RUNNING, None), (State.SCHEDULED, person), (State.PAUSED, None)]):
        run = factories.flow_run(factories.flow(factories.workspace()), state=from_state)
        moved, names, history = set_listed_flow_run_state(run.pk, run.workspace_id, State.FAILED, actor=Actor.USER,
                                                          message=message, user=user)
        assert (moved.pk, moved.state, moved.state_message) == (run.pk, State.FAILED, message)
        assert names["flow"] == run.flow.name and names["agent"] is None
        assert history == hot_sql.run_history(run.pk) and history[-1]["user"] == (user and user.username)
        change = StateChange.objects.get(flow_run=run)
        assert (change.from_state, change.task_run_id, change.user_id, change.agent_id, change.message) == (
            from_state, None, user and user.pk, None, message)
    assert any(statement.startswith("WITH target AS (SELECT") for statement in prepared_statements(connection))


@pytest.mark.parametrize("value, expected", [(None, 0), ("", 0), ("true", 0), ("false", None), ("0", None)])
def test_database_prepared_statements_comes_from_the_environment(value, expected):
    env = {"DEBUG": "true", "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x"}
    if value is not None:
        env["DATABASE_PREPARED_STATEMENTS"] = value
    databases, = settings_of(env, "DATABASES")
    assert databases["default"]["OPTIONS"]["prepare_threshold"] == expected


@pytest.mark.django_db(transaction=True)
def test_a_migration_that_changes_a_returned_columns_type_does_not_break_a_prepared_statement(postgres_only,
                                                                                               monkeypatch):
    """PostgreSQL refuses a prepared statement whose result type changed ("cached plan must not
    change result type") on every run until its connection closes: the statement is sent again on
    a new connection, for a read (the run to change) and a write (the heartbeat's UPDATE)."""
    run = factories.flow_run(factories.flow(factories.workspace()), state=State.RUNNING, token_generation=1)
    db = own_connection(monkeypatch)
    column = FlowRun._meta.get_field("state")  # returned by both

    def alter(length):
        other = new_connection("ddl")
        try:
            with other.cursor() as cursor:
                cursor.execute(f"ALTER TABLE runs_flowrun ALTER COLUMN {column.column} TYPE varchar({length})")
        finally:
            other.close()

    try:
        assert hot_sql.run_to_change(run.pk, run.workspace_id)[0].pk == run.pk
        assert hot_sql.beat_flow_run(run.pk, run.workspace_id, timezone.now(), 1) is not None
        first = db.connection
        assert len(prepared_statements(db)) == 2
        alter(column.max_length + 1)
        try:
            assert hot_sql.beat_flow_run(run.pk, run.workspace_id, timezone.now(), 1)[0] == State.RUNNING
            assert db.connection is not first  # a new connection, with nothing prepared
            assert hot_sql.run_to_change(run.pk, run.workspace_id)[0].state == State.RUNNING
            second = db.connection
            alter(column.max_length + 2)
            assert hot_sql.run_to_change(run.pk, run.workspace_id)[0].state == State.RUNNING
            assert db.connection is not second
            # In a transaction: lost, as a passing failure of the database (a 503 to retry), and
            # its rollback lets the next one work on the same connection.
            third = db.connection
            alter(column.max_length + 3)
            db.set_autocommit(False)
            try:
                with pytest.raises(OperationalError, match="A migration changed what this statement returns"):
                    hot_sql.run_to_change(run.pk, run.workspace_id)
                db.rollback()
            finally:
                db.set_autocommit(True)
            assert hot_sql.run_to_change(run.pk, run.workspace_id)[0].state == State.RUNNING
            assert db.connection is third
        finally:
            alter(column.max_length)
    finally:
        db.close()


@pytest.mark.django_db
def test_the_prepared_polls_generic_plan_still_probes_the_partial_index_of_due_runs(postgres_only):
    """A prepared statement may be run with a plan made without its parameters' values: the poll's
    states are in its text, so even that plan can use `flowrun_claimable` (SCHEDULED and LATE runs);
    with the states as parameters it could not, and read every run of the table.

    Many runs of the agent's queue, none due, and fresh statistics: the partial index is then the
    cheapest way to the due ones whenever a plan may use it (on a near-empty table the planner may
    well take the queue's own index, as a CI run of this test once saw)."""
    ws = factories.workspace()
    queue = factories.work_queue(ws, name="default")
    agent = Agent.objects.create(workspace=ws, name="planned")
    agent.queues.set([queue])
    flow, now = factories.flow(ws), timezone.now()
    FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, work_queue=queue, name=f"done-{i}",
                                         state=State.COMPLETED, scheduled_start=now) for i in range(3000)])
    sql = hot_sql._poll_sql()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runs_flowrun")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute("SET LOCAL enable_seqscan = off")  # an index whenever one can serve
        cursor.execute(f"PREPARE poll_plan AS {numbered(sql)}")
        cursor.execute("EXPLAIN EXECUTE poll_plan(%s, %s, %s, %s)", [now, now, agent.pk, ws.pk])
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE poll_plan")
    assert sql.count("%s") == 4 and "flowrun_claimable" in plan
