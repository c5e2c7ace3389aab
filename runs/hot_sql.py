"""SQL written by hand for the API's measured hot paths (issue 16): the ORM builds each query anew
on every request, and on these paths that building cost more CPU than the database's own work.

Each function here has a measured reason in `make bench BENCH_ARGS=http` and an ORM twin or test
that pins what it does; everything else stays with the ORM. Column and table names come from the
models' `_meta`, so a renamed field breaks loudly here instead of silently elsewhere.
"""

import functools

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connection, connections

from runs.models import Agent, Flow, FlowRun, Schedule, StateChange


# --- state change ---
# A user's state change (FlowRunViewSet.set_state, cancel, retry): the ORM's query building for the
# run's five joins, the conditional UPDATE, the refresh after it and the history with its people and
# agents were most of the request's CPU (issue 16: 5.6 ms in-process, 0.25 of it a ping's). The ORM
# twins are FlowRunViewSet.get_object with the viewset's select_related, _set_state's ORM branch
# with refresh_from_db, and FlowRunDetailSerializer; tests/api/test_flow_runs.py pins that the
# answers agree.


def _quote(name):
    return connection.ops.quote_name(name)


def _table(model):
    return _quote(model._meta.db_table)


def _column(model, name):
    return _quote(model._meta.get_field(name).column)


# Converters from a database value to the field's Python value, as the ORM applies them (SQLite
# hands back datetimes as text and UUIDs as hex, JSON comes as text): built once per vendor.
_CONVERTERS = {}


def _converters(db, model, names):
    key = (db.vendor, model, names)
    if key not in _CONVERTERS:
        fields = [model._meta.get_field(name) for name in names]
        _CONVERTERS[key] = [
            [(converter, field.get_col(model._meta.db_table)) for converter in
             db.ops.get_db_converters(field.get_col(model._meta.db_table)) + field.get_db_converters(db)]
            for field in fields
        ]
    return _CONVERTERS[key]


def _convert(db, model, names, values):
    converted = []
    for value, converters in zip(values, _converters(db, model, names)):
        for converter, expression in converters:
            value = converter(value, expression, db)
        converted.append(value)
    return converted


# What a run's answer names, by the name of its foreign key.
RUN_NAMES = ("flow", "work_queue", "agent", "created_by", "created_by_key")


def _shown(model):
    """The column a run's answer shows of what it names; a person: the username (str() of Django's user)."""
    return model.USERNAME_FIELD if model is get_user_model() else "name"


@functools.cache
def run_fields():
    """The attnames of a flow run's columns, in the order the functions here return them."""
    return tuple(field.attname for field in FlowRun._meta.concrete_fields)


def run_to_change(run_id, workspace_id):
    """The listed run `run_id` of the workspace (FlowRun.objects.listed()) with the names its answer
    shows, as (run, {foreign key name: name or None}); None when there is no such run.

    `created_by` is the person's username: str() of Django's user (the serializer's StringRelatedField)."""
    fields, db = run_fields(), connections[DEFAULT_DB_ALIAS]
    with db.cursor() as cursor:
        cursor.execute(_run_to_change_sql(db.vendor), [FlowRun._meta.pk.get_db_prep_value(run_id, db), workspace_id])
        row = cursor.fetchone()
    if row is None:
        return None
    run = FlowRun.from_db(db.alias, fields, _convert(db, FlowRun, fields, row[:len(fields)]))
    return run, dict(zip(RUN_NAMES, row[len(fields):]))


@functools.cache
def _run_to_change_sql(vendor):
    fields = run_fields()
    run_table = _table(FlowRun)
    joins, names = [], []
    for i, name in enumerate(RUN_NAMES):
        model = FlowRun._meta.get_field(name).related_model
        alias = f"n{i}"
        joins.append(f"LEFT JOIN {_table(model)} {alias} ON {alias}.{_quote(model._meta.pk.column)} = "
                     f"{run_table}.{_column(FlowRun, name)}")
        names.append(f"{alias}.{_column(model, _shown(model))}")
    deleted = _column(Flow, "deleted_at")
    return (
        f"SELECT {', '.join(f'{run_table}.{_column(FlowRun, f)}' for f in fields)}, {', '.join(names)} "
        f"FROM {run_table} {' '.join(joins)} "
        f"WHERE {run_table}.{_quote(FlowRun._meta.pk.column)} = %s "
        f"AND {run_table}.{_column(FlowRun, 'workspace')} = %s "
        f"AND {run_table}.{_column(FlowRun, 'deleted_at')} IS NULL AND n0.{deleted} IS NULL "
        # listed(): not of a schedule marked deleted (a run of no schedule is listed).
        f"AND NOT EXISTS (SELECT 1 FROM {_table(Schedule)} s WHERE s.{_quote(Schedule._meta.pk.column)} = "
        f"{run_table}.{_column(FlowRun, 'schedule')} AND s.{_column(Schedule, 'deleted_at')} IS NOT NULL)"
    )


def move_flow_run(run_id, from_state, values, change):
    """UPDATE the run to `values` ({attname: plain value}) if it is still in `from_state`, and then
    INSERT its history row `change` (an unsaved StateChange); returns the run's columns as the
    UPDATE left them (run_fields() order), or None, with no row written, if it moved meanwhile.

    _set_state's conditional update without a fence or SQL expressions, with RETURNING in place of
    the refresh after it (PostgreSQL, SQLite ≥ 3.35: connection.features.can_return_columns_from_insert).
    On PostgreSQL one statement does both (the INSERT reads the UPDATE's row), a round trip fewer;
    the caller's transaction holds them together either way."""
    meta, db = FlowRun._meta, connections[DEFAULT_DB_ALIAS]
    moving = [meta.get_field(name).get_db_prep_save(value, db) for name, value in values.items()]
    moving += [meta.pk.get_db_prep_value(run_id, db), from_state]
    adding = [field.get_db_prep_save(getattr(change, field.attname), db) for field in _history_fields()]
    with db.cursor() as cursor:
        if db.vendor == "postgresql":
            cursor.execute(_move_and_add_sql(db.vendor, tuple(values)), moving + adding[1:])
            row = cursor.fetchone()
        else:
            cursor.execute(_move_flow_run_sql(db.vendor, tuple(values)), moving)
            row = cursor.fetchone()
            if row is not None:
                cursor.execute(_add_history_row_sql(db.vendor), adding)
    return None if row is None else _convert(db, FlowRun, run_fields(), row)


@functools.lru_cache(maxsize=64)
def _move_flow_run_sql(vendor, names):
    meta = FlowRun._meta
    assignments = ", ".join(f"{_quote(meta.get_field(name).column)} = %s" for name in names)
    return (f"UPDATE {_table(FlowRun)} SET {assignments} WHERE {_quote(meta.pk.column)} = %s "
            f"AND {_column(FlowRun, 'state')} = %s RETURNING {', '.join(_column(FlowRun, f) for f in run_fields())}")


@functools.lru_cache(maxsize=64)
def _move_and_add_sql(vendor, names):
    """The UPDATE, and the INSERT of the history row for the run it returned (none if it returned
    none): a data-modifying WITH runs exactly once, whether or not the outer SELECT reads it."""
    fields = _history_fields()
    assert fields[0].name == "flow_run"  # taken from the moved row, not from a parameter
    return (f"WITH moved AS ({_move_flow_run_sql(vendor, names)}), "
            f"added AS (INSERT INTO {_table(StateChange)} ({', '.join(_quote(f.column) for f in fields)}) "
            f"SELECT moved.{_quote(FlowRun._meta.pk.column)}, {', '.join(['%s'] * (len(fields) - 1))} FROM moved) "
            f"SELECT * FROM moved")


_HISTORY_FIELDS = ("flow_run", "task_run", "from_state", "to_state", "message", "actor", "user", "agent", "timestamp")


@functools.cache
def _history_fields():
    return [StateChange._meta.get_field(name) for name in _HISTORY_FIELDS]


@functools.cache
def _add_history_row_sql(vendor):
    fields = _history_fields()
    return (f"INSERT INTO {_table(StateChange)} ({', '.join(_quote(f.column) for f in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})")


_SHOWN_HISTORY = ("from_state", "to_state", "message", "actor", "timestamp")


def run_history(run_id):
    """The run's history as its answer shows it (StateChange's ordering): each row a dict of
    from_state, to_state, message, actor, timestamp, and user / agent as their names (or None)."""
    db = connections[DEFAULT_DB_ALIAS]
    with db.cursor() as cursor:
        cursor.execute(_run_history_sql(db.vendor), [FlowRun._meta.pk.get_db_prep_value(run_id, db)])
        rows = cursor.fetchall()
    history = []
    for row in rows:
        entry = dict(zip(_SHOWN_HISTORY, _convert(db, StateChange, _SHOWN_HISTORY, row[:5])))
        entry["user"], entry["agent"] = row[5], row[6]
        history.append(entry)
    return history


@functools.cache
def _run_history_sql(vendor):
    table, user_model = _table(StateChange), get_user_model()
    return (
        f"SELECT {', '.join(f'{table}.{_column(StateChange, f)}' for f in _SHOWN_HISTORY)}, "
        f"u.{_column(user_model, _shown(user_model))}, a.{_column(Agent, _shown(Agent))} FROM {table} "
        f"LEFT JOIN {_table(user_model)} u ON u.{_quote(user_model._meta.pk.column)} = "
        f"{table}.{_column(StateChange, 'user')} "
        f"LEFT JOIN {_table(Agent)} a ON a.{_quote(Agent._meta.pk.column)} = {table}.{_column(StateChange, 'agent')} "
        f"WHERE {table}.{_column(StateChange, 'flow_run')} = %s "
        f"ORDER BY {table}.{_column(StateChange, 'timestamp')}, {table}.{_quote(StateChange._meta.pk.column)}"
    )
