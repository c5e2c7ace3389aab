"""SQL written by hand for the API's measured hot paths (issue 16): the ORM builds each query anew
on every request, and on these paths that building cost more CPU than the database's own work.

Each function here has a measured reason in `make bench BENCH_ARGS=http` and an ORM twin or test
that pins what it does; everything else stays with the ORM. Column and table names come from the
models' `_meta`, so a renamed field breaks loudly here instead of silently elsewhere.
"""

import functools
import json

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction


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
