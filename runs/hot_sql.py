"""SQL written by hand for the API's measured hot paths (issue 16): the ORM builds each query anew
on every request, and on these paths that building cost more CPU than the database's own work.

Each function here has a measured reason in `make bench BENCH_ARGS=http` and an ORM twin or test
that pins what it does; everything else stays with the ORM. Column and table names come from the
models' `_meta`, so a renamed field breaks loudly here instead of silently elsewhere.
"""

import functools

from django.db import connection, transaction

from runs.models import Flow, FlowRun, FlowVersion, StateChange, WorkQueue


# --- create a run ---
# POST …/flow_runs/ (runs/api/flow_runs.py, through runs/scheduling.py's create_manual_run) made
# four ORM queries for the flow, its latest version and the default queue, then get_or_create's
# SELECT, SAVEPOINT, INSERT and RELEASE and the history's INSERT inside BEGIN … COMMIT: building
# them and the round trips were most of the request's CPU. Here the lookups are one query, and on
# PostgreSQL the run and its history row one statement that writes nothing when the idempotency key
# is taken (the unique (workspace, idempotency_key) constraint settles a race, as before).
# Measured (make bench BENCH_ARGS=http, 2 cores, shared): 6.62 -> 1.45 ms server CPU per request.


def _quoted(model, name=None):
    """A model's table, or one of its fields' column, quoted for the database in use."""
    return connection.ops.quote_name(model._meta.get_field(name).column if name else model._meta.db_table)


def _insert_fields(model):
    """The columns an ORM INSERT of `model` writes: all but an auto-incremented id."""
    return [f for f in model._meta.local_concrete_fields if f is not model._meta.auto_field]


def _insert_values(obj, fields):
    """`obj`'s values as the ORM's INSERT prepares them (pre_save: auto_now; get_db_prep_save: the
    database's forms of UUIDs, datetimes and JSON, which differ between PostgreSQL and SQLite)."""
    return [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]


@functools.cache
def _manual_run_target_sql(vendor):
    flow, version, queue = (f'{_quoted(Flow)} f', f'{_quoted(FlowVersion)} v', f'{_quoted(WorkQueue)} q')
    return (
        f'SELECT f.{_quoted(Flow, "id")}, f.{_quoted(Flow, "name")}, v.{_quoted(FlowVersion, "id")}, '
        f'v.{_quoted(FlowVersion, "parameters")}, q.{_quoted(WorkQueue, "id")}, q.{_quoted(WorkQueue, "name")} '
        f'FROM {flow} '
        # At most one: the one_latest_version constraint.
        f'LEFT JOIN {version} ON v.{_quoted(FlowVersion, "flow")} = f.{_quoted(Flow, "id")} '
        f'AND v.{_quoted(FlowVersion, "is_latest")} '
        # At most one: work_queue_name_unique.
        f'LEFT JOIN {queue} ON q.{_quoted(WorkQueue, "workspace")} = f.{_quoted(Flow, "workspace")} '
        f'AND q.{_quoted(WorkQueue, "name")} = %s '
        # At most one: flow_name_unique among the flows not marked deleted (Flow.objects).
        f'WHERE f.{_quoted(Flow, "workspace")} = %s AND f.{_quoted(Flow, "name")} = %s '
        f'AND f.{_quoted(Flow, "deleted_at")} IS NULL'
    )


def manual_run_target(workspace_id, flow_name, queue_name):
    """(flow, its latest version or None, the workspace's queue `queue_name` or None) for a run of the
    flow named `flow_name` in the workspace, in one query; None when the workspace has no such flow
    (or it is marked deleted).

    The instances hold what a new run and its answer need (the flow's name, the version's
    parameters, the queue's name); their other fields load when read, as with the ORM's only().
    ORM twin: Flow.objects.get(workspace_id=…, name=…), flow.latest_version, and
    WorkQueue.objects.filter(workspace_id=…, name=…).first().
    """
    with connection.cursor() as cursor:
        cursor.execute(_manual_run_target_sql(connection.vendor), [queue_name, workspace_id, flow_name])
        row = cursor.fetchone()
    if row is None:
        return None
    flow_id, name, version_id, parameters, queue_id, queue = row
    flow = Flow.from_db(connection.alias, ["id", "workspace_id", "name"], [flow_id, workspace_id, name])
    version = None if version_id is None else FlowVersion.from_db(
        connection.alias, ["id", "flow_id", "parameters"],
        [version_id, flow_id, FlowVersion._meta.get_field("parameters").from_db_value(parameters, None, connection)])
    queue = None if queue_id is None else WorkQueue.from_db(
        connection.alias, ["id", "workspace_id", "name"], [queue_id, workspace_id, queue])
    return flow, version, queue


def _columns(fields):
    return ", ".join(connection.ops.quote_name(f.column) for f in fields)


@functools.cache
def _manual_run_insert_sql(vendor):
    """(SQL, the run's fields, the history's fields but its run) of the INSERTs of a new run and its
    first history row: on PostgreSQL one statement (a data-modifying WITH, atomic by itself, so no
    BEGIN and COMMIT round trips), elsewhere two, in a transaction."""
    constraint = next(c for c in FlowRun._meta.constraints if c.name == "flowrun_idempotency_key_unique")
    assert constraint.fields == ("workspace", "idempotency_key"), "update the conflict target below"
    run_fields = _insert_fields(FlowRun)
    history_fields = [f for f in _insert_fields(StateChange) if f.name != "flow_run"]
    insert_run = (
        f'INSERT INTO {_quoted(FlowRun)} ({_columns(run_fields)}) VALUES ({", ".join(["%s"] * len(run_fields))}) '
        f'ON CONFLICT ({_quoted(FlowRun, "workspace")}, {_quoted(FlowRun, "idempotency_key")}) '
        f'WHERE {_quoted(FlowRun, "idempotency_key")} IS NOT NULL DO NOTHING'
    )
    history_columns = f'{_quoted(StateChange, "flow_run")}, {_columns(history_fields)}'
    placeholders = ", ".join(["%s"] * len(history_fields))
    if vendor == "postgresql":
        # The history row is made from the run's RETURNING: none when the key was taken.
        return ((f'WITH run AS ({insert_run} RETURNING {_quoted(FlowRun, "id")}) '
                 f'INSERT INTO {_quoted(StateChange)} ({history_columns}) '
                 f'SELECT run.{_quoted(FlowRun, "id")}, {placeholders} FROM run',),
                run_fields, history_fields)
    return ((insert_run, f'INSERT INTO {_quoted(StateChange)} ({history_columns}) VALUES (%s, {placeholders})'),
            run_fields, history_fields)


def insert_manual_run(run, history):
    """INSERT `run` (a FlowRun not saved yet) and its first `history` row (a StateChange of it),
    together; True. When the run's idempotency key is taken in its workspace, neither: False.

    ORM twin: FlowRun.objects.get_or_create(workspace_id=…, idempotency_key=…, defaults=…) and, when
    it created, StateChange.objects.create(…), in one transaction. `history.id` stays unset (nothing
    reads it).
    """
    statements, run_fields, history_fields = _manual_run_insert_sql(connection.vendor)
    run_values, history_values = _insert_values(run, run_fields), _insert_values(history, history_fields)
    if len(statements) == 1:
        with connection.cursor() as cursor:
            cursor.execute(statements[0], run_values + history_values)
            created = cursor.rowcount == 1
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statements[0], run_values)
            created = cursor.rowcount == 1
            if created:
                cursor.execute(statements[1], [FlowRun._meta.pk.get_db_prep_save(run.pk, connection), *history_values])
    if created:
        for obj in (run, history):
            obj._state.adding, obj._state.db = False, connection.alias
    return created
