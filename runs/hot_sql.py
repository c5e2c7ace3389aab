"""SQL written by hand for the API's measured hot paths (issue 16): the ORM builds each query anew
on every request, and on these paths that building cost more CPU than the database's own work.

Each function here has a measured reason in `make bench BENCH_ARGS=http` and an ORM twin or test
that pins what it does; everything else stays with the ORM. Column and table names come from the
models' `_meta`, so a renamed field breaks loudly here instead of silently elsewhere.
"""

import functools
import json

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from runs.models import Agent, Flow, FlowRun, Schedule, StateChange


def _column(model, name):
    return connection.ops.quote_name(model._meta.get_field(name).column)


# --- flow-run heartbeat ---

# What a flow run's heartbeat reads back from its UPDATE: the answer (state) and its event's related resources.
BEAT_FIELDS = ("state", "flow", "work_queue", "agent")


def beat_flow_run(run_id, workspace_id, now, generation):
    """Move the flow run's last heartbeat to `now` if `generation` is its current attempt; returns
    (state, flow_id, work_queue_id, agent_id), or None when no such run of that attempt is in the
    workspace.

    On PostgreSQL one round trip: `SET LOCAL synchronous_commit TO OFF; UPDATE … RETURNING` sent as
    one query string runs as one implicit transaction (outside an atomic block), so the commit does
    not wait for the WAL flush (a beat lost in a database crash is replaced by the next one, and the
    flush was most of its cost). Elsewhere: the UPDATE in a transaction, RETURNING where SQLite has
    it (≥ 3.35), else one read by primary key. The statement is built once per process.
    """
    from runs.models import FlowRun

    db = connections[DEFAULT_DB_ALIAS]  # once: each use of the `connection` proxy is a thread-local lookup
    update, returning = _beat_sql(db.vendor)
    if db.vendor == "postgresql":
        with db.cursor() as cursor:
            cursor.execute(f"SET LOCAL synchronous_commit TO OFF; {update} RETURNING {returning}",
                           [now, run_id, workspace_id, generation])
            cursor.nextset()  # past the SET's result to the UPDATE's
            return cursor.fetchone()
    params = [FlowRun._meta.get_field("last_heartbeat").get_db_prep_value(now, db),
              FlowRun._meta.pk.get_db_prep_value(run_id, db), workspace_id, generation]
    with transaction.atomic(), db.cursor() as cursor:
        if db.features.can_return_columns_from_insert:
            cursor.execute(f"{update} RETURNING {returning}", params)
            return cursor.fetchone()
        cursor.execute(update, params)
        if not cursor.rowcount:
            return None
    return FlowRun.objects.filter(pk=run_id).values_list(*(f"{name}_id" if name != "state" else name
                                                           for name in BEAT_FIELDS)).first()


@functools.cache
def _beat_sql(vendor):
    """(the beat's UPDATE, its RETURNING list) for the database `vendor`."""
    from runs.models import FlowRun

    table = connection.ops.quote_name(FlowRun._meta.db_table)
    update = (f"UPDATE {table} SET {_column(FlowRun, 'last_heartbeat')} = %s "
              f"WHERE {_column(FlowRun, 'id')} = %s AND {_column(FlowRun, 'workspace')} = %s "
              f"AND {_column(FlowRun, 'token_generation')} = %s")
    return update, ", ".join(_column(FlowRun, name) for name in BEAT_FIELDS)


# --- agent poll ---

def poll_snapshot(agent_id, workspace_id, now, stale_before):
    """What an agent's poll needs to know before claiming, in one query (PostgreSQL only): None when
    the workspace has no such agent, else (name, status, [(queue id, polled before `stale_before`)],
    [(id, state) of its SUBMITTED and CANCELLING runs, oldest scheduled start first], whether any
    run is due in one of its unpaused queues).

    Each of its queues is probed for a due run through the partial index `flowrun_claimable`
    (queue, start) of SCHEDULED and LATE runs, in that order of states so that the planner sees the
    index's predicate; the runs due in other workspaces are never read.

    A poll that finds nothing due and nothing to hand out again needs no more than this (see
    runs/api/agents.py `quiet_poll`); the claim itself, with its locks, runs only when it has work.
    """
    from runs.models import State

    db = connections[DEFAULT_DB_ALIAS]
    with db.cursor() as cursor:
        cursor.execute(_poll_sql(), [stale_before, State.SUBMITTED, State.CANCELLING, State.SCHEDULED, State.LATE,
                                     now, agent_id, workspace_id])
        row = cursor.fetchone()
    if row is None:
        return None
    name, status, queue_rows, mine, due = row
    queue_rows, mine = (json.loads(v) if isinstance(v, str) else v for v in (queue_rows, mine))  # json, or its text
    return name, status, [tuple(q) for q in queue_rows], [tuple(r) for r in mine], due


@functools.cache
def _poll_sql():
    from runs.models import Agent, FlowRun, WorkQueue

    quote = connection.ops.quote_name
    runs, queues, agents = (quote(m._meta.db_table) for m in (FlowRun, WorkQueue, Agent))
    through = Agent.queues.through._meta
    link = quote(through.db_table)
    link_agent = quote(through.get_field("agent").column)
    link_queue = quote(through.get_field("workqueue").column)
    run_agent, run_state, run_start = (_column(FlowRun, n) for n in ("agent", "state", "scheduled_start"))
    run_deleted, run_queue, run_id = (_column(FlowRun, n) for n in ("deleted_at", "work_queue", "id"))
    queue_id, paused, polled = (_column(WorkQueue, n) for n in ("id", "paused", "last_polled"))
    agent_id = _column(Agent, "id")
    return f"""
        SELECT a.{_column(Agent, 'name')}, a.{_column(Agent, 'status')},
          (SELECT COALESCE(json_agg(json_build_array(q.{queue_id}, q.{polled} IS NULL OR q.{polled} < %s)
                                    ORDER BY q.{queue_id}), '[]')
             FROM {queues} q JOIN {link} l ON l.{link_queue} = q.{queue_id} WHERE l.{link_agent} = a.{agent_id}),
          (SELECT COALESCE(json_agg(json_build_array(r.{run_id}, r.{run_state}) ORDER BY r.{run_start}), '[]')
             FROM {runs} r WHERE r.{run_agent} = a.{agent_id} AND r.{run_state} IN (%s, %s)
              AND r.{run_deleted} IS NULL),
          EXISTS (SELECT 1 FROM {link} l JOIN {queues} q ON q.{queue_id} = l.{link_queue}
                   WHERE l.{link_agent} = a.{agent_id} AND NOT q.{paused}
                     AND EXISTS (SELECT 1 FROM {runs} r WHERE r.{run_queue} = q.{queue_id}
                                    AND r.{run_state} IN (%s, %s) AND r.{run_start} <= %s AND r.{run_deleted} IS NULL))
          FROM {agents} a WHERE a.{agent_id} = %s AND a.{_column(Agent, 'workspace')} = %s
    """


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
