"""SQL written by hand for the API's measured hot paths (issue 16): the ORM builds each query anew
on every request, and on these paths that building cost more CPU than the database's own work.

Each function here has a measured reason in `make bench BENCH_ARGS=http` and an ORM twin or test
that pins what it does; everything else stays with the ORM. Column and table names come from the
models' `_meta`, so a renamed field breaks loudly here instead of silently elsewhere.
"""

import functools
import json
from datetime import datetime, timezone as dt_timezone

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, NotSupportedError, OperationalError, connection, connections, transaction
from django.db.models import BigIntegerField, F, Lookup, Q
from django.db.models.expressions import RawSQL

from runs.models import Agent, Flow, FlowRun, FlowVersion, Schedule, State, StateChange, TaskRun, WorkQueue


def _quote(name):
    return connection.ops.quote_name(name)


def _quoted(model, name=None):
    """A model's table, or one of its fields' column, quoted for the database in use."""
    return _quote(model._meta.get_field(name).column if name else model._meta.db_table)


def _columns(fields):
    return ", ".join(_quote(f.column) for f in fields)


# --- flow-run heartbeat ---

# What a flow run's heartbeat reads back from its UPDATE: the answer (state) and its event's related resources.
BEAT_FIELDS = ("state", "flow", "work_queue", "agent")


def beat_flow_run(run_id, workspace_id, now, generation):
    """Move the flow run's last heartbeat to `now` if `generation` is its current attempt; returns
    (state, flow_id, work_queue_id, agent_id), or None when no such run of that attempt is in the
    workspace.

    On PostgreSQL one round trip, its parameters bound by the server (`_server_bound`), and its
    own implicit transaction (outside an atomic block) that commits without waiting for the WAL
    flush: the statement sets synchronous_commit off for its transaction itself (a beat lost in a
    database crash is replaced by the next one, and the flush was most of its cost). Elsewhere: the
    UPDATE in a transaction, RETURNING where SQLite has it (≥ 3.35), else one read by primary key.
    The statement is built once per process.
    """
    db = connections[DEFAULT_DB_ALIAS]  # once: each use of the `connection` proxy is a thread-local lookup
    update, returning = _beat_sql(db.vendor)
    if db.vendor == "postgresql":
        return _bound_fetch(db, f"{update} RETURNING {returning}", [now, run_id, workspace_id, generation])
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
    # On PostgreSQL set_config(…, true) in the statement: a `SET LOCAL` beside it would make two
    # statements, which only a query with its parameters quoted into the text may send at once.
    unflushed = " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS unflushed" \
        if vendor == "postgresql" else ""
    update = (f"UPDATE {_quoted(FlowRun)} SET {_quoted(FlowRun, 'last_heartbeat')} = %s{unflushed} "
              f"WHERE {_quoted(FlowRun, 'id')} = %s AND {_quoted(FlowRun, 'workspace')} = %s "
              f"AND {_quoted(FlowRun, 'token_generation')} = %s")
    return update, ", ".join(f"{_quoted(FlowRun)}.{_quoted(FlowRun, name)}" for name in BEAT_FIELDS)


def write_beats(beats):
    """Write the heartbeats `beats` ({run id: (moment, generation, workspace id)}) in one statement
    (PostgreSQL; runs/beats_behind.py); returns how many runs' heartbeats it moved.

    A beat moves its run's last heartbeat only if it is of the run's current attempt, in its
    workspace, and later than the heartbeat there (two writers, or a synchronous beat, never move
    it back). The rows are locked in id order, as every writer of beats locks them: no deadlock
    between the processes' writers; and as the beat's UPDATE locks its row (FOR NO KEY UPDATE, the
    heartbeat being no key): not waiting for the transactions that insert a row naming a run (a
    task run, a state change), which hold FOR KEY SHARE on it until they commit."""
    ordered = sorted(beats.items(), key=lambda item: item[0])
    params = [[run_id for run_id, _ in ordered], [beat[0] for _, beat in ordered],
              [beat[1] for _, beat in ordered], [beat[2] for _, beat in ordered]]
    return _bound_fetch(connections[DEFAULT_DB_ALIAS], _write_beats_sql(), params)[0]


@functools.cache
def _write_beats_sql():
    run, id_, beat = _quoted(FlowRun), _quoted(FlowRun, "id"), _quoted(FlowRun, "last_heartbeat")
    return (f"WITH heard AS (SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::bigint[], %s::bigint[]) "
            f"AS heard(id, moment, generation, workspace)), "
            f"locked AS (SELECT beaten.{id_}, heard.moment FROM {run} AS beaten JOIN heard ON beaten.{id_} = heard.id "
            f"AND beaten.{_quoted(FlowRun, 'token_generation')} = heard.generation "
            f"AND beaten.{_quoted(FlowRun, 'workspace')} = heard.workspace "
            f"ORDER BY beaten.{id_} FOR NO KEY UPDATE OF beaten), "
            f"written AS (UPDATE {run} SET {beat} = GREATEST({run}.{beat}, locked.moment) FROM locked "
            f"WHERE {run}.{id_} = locked.{id_} RETURNING 1) "
            f"SELECT count(*) FROM written")


def _literals(*values):
    """SQL string literals of `values` (constants of the code, e.g. states), comma-separated."""
    return ", ".join("'" + str(value).replace("'", "''") + "'" for value in values)


def _bound_fetch(db, sql, params, *, every=False):
    """The first row (`every`: all rows) of `sql` run on a `_server_bound` cursor.

    A statement prepared on a connection before a migration changed the type of a column it
    returns fails there with "cached plan must not change result type" (SQLSTATE 0A000), on every
    later run, until the connection closes. Such a failure ran nothing, so outside a transaction
    the statement is sent once more, on a new connection; in one (an atomic block, or autocommit
    turned off) the transaction is lost anyway: an OperationalError, the database's passing failure,
    and the rollback makes psycopg forget what it prepared, so the request's retry works."""
    for again in (False, True):
        try:
            with _server_bound(db) as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if every else cursor.fetchone()
        except NotSupportedError as exc:
            if again or getattr(exc.__cause__, "sqlstate", None) != "0A000":
                raise
            if db.in_atomic_block or not db.get_autocommit():
                # The request's 503 with Retry-After (orchestrator/health.py), not a 500: a retry works.
                raise OperationalError(f"A migration changed what this statement returns: {exc}") from exc
            db.close()


def _server_bound(db):
    """db.cursor(), but on PostgreSQL a cursor whose parameters the server binds: Django's cursors
    quote each parameter into the SQL text in Python (psycopg's ClientCursor), a third of a one-row
    statement's client CPU (a heartbeat's UPDATE: 80 µs where db.cursor() took 115). The parameters
    must be of types psycopg names (datetimes, UUIDs, integers, strings compared with a column), and
    the SQL one statement. Such a statement is prepared on its connection at its first run there
    (DATABASE_PREPARED_STATEMENTS, settings.py), so PostgreSQL plans it once instead of on every
    run: a condition a partial index needs must be in its text, not a parameter (`_poll_sql`).
    Wrapped as Django wraps its cursors: its errors are Django's, and it is logged when queries are
    (DEBUG, the tests' captures)."""
    if db.vendor != "postgresql":
        return db.cursor()
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    from orchestrator.db.postgresql.base import ServerBindingCursor

    db.close_if_health_check_failed()
    db.ensure_connection()
    with db.wrap_database_errors:
        cursor = ServerBindingCursor(db.connection)
        # As Django's create_cursor: its loader of timestamps when the connection's differs.
        if db.timezone != db.connection.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT).timezone:
            register_tzloader(db.timezone, cursor)
    return db.make_debug_cursor(cursor) if db.queries_logged else db.make_cursor(cursor)


# --- agent poll ---

def poll_snapshot(agent_id, workspace_id, now, stale_before):
    """What an agent's poll needs to know before claiming, in one query (PostgreSQL only): None when
    the workspace has no such agent, else (name, status, [(queue id, paused, concurrency limit, whether
    polled before `stale_before`)], [(id, state) of its SUBMITTED and CANCELLING runs, oldest scheduled
    start first], whether any run is due in one of its unpaused queues).

    Each of its queues is probed for a due run through the partial index `flowrun_claimable`
    (queue, start) of SCHEDULED and LATE runs, in that order of states so that the planner sees the
    index's predicate; the runs due in other workspaces are never read.

    A poll that finds nothing due and nothing to hand out again needs no more than this (see
    runs/api/agents.py `quiet_poll`); the claim itself, with its locks, runs only when it has work,
    and takes the agent, its queues and its runs from here (runs/claiming.py poll_state).
    """
    db = connections[DEFAULT_DB_ALIAS]
    row = _bound_fetch(db, _poll_sql(), [stale_before, now, agent_id, workspace_id])
    if row is None:
        return None
    name, status, queue_rows, mine, due = row
    queue_rows, mine = (json.loads(v) if isinstance(v, str) else v for v in (queue_rows, mine))  # json, or its text
    return name, status, [tuple(q) for q in queue_rows], [tuple(r) for r in mine], due


@functools.cache
def _poll_sql():
    runs, queues, agents = (_quoted(m) for m in (FlowRun, WorkQueue, Agent))
    through = Agent.queues.through
    link, link_agent, link_queue = _quoted(through), _quoted(through, "agent"), _quoted(through, "workqueue")
    run_agent, run_state, run_start = (_quoted(FlowRun, n) for n in ("agent", "state", "scheduled_start"))
    run_deleted, run_queue, run_id = (_quoted(FlowRun, n) for n in ("deleted_at", "work_queue", "id"))
    queue_id, paused, polled = (_quoted(WorkQueue, n) for n in ("id", "paused", "last_polled"))
    agent_id = _quoted(Agent, "id")
    # The states are written into the text, not passed: a prepared statement's generic plan, made
    # without its parameters' values, could not use the partial index `flowrun_claimable` (SCHEDULED
    # and LATE runs) and would read every run of the table.
    mine, due = _literals(State.SUBMITTED, State.CANCELLING), _literals(State.SCHEDULED, State.LATE)
    return f"""
        SELECT a.{_quoted(Agent, 'name')}, a.{_quoted(Agent, 'status')},
          (SELECT COALESCE(json_agg(json_build_array(q.{queue_id}, q.{paused}, q.{_quoted(WorkQueue, 'concurrency_limit')},
                                                     q.{polled} IS NULL OR q.{polled} < %s)
                                    ORDER BY q.{queue_id}), '[]')
             FROM {queues} q JOIN {link} l ON l.{link_queue} = q.{queue_id} WHERE l.{link_agent} = a.{agent_id}),
          (SELECT COALESCE(json_agg(json_build_array(r.{run_id}, r.{run_state}) ORDER BY r.{run_start}), '[]')
             FROM {runs} r WHERE r.{run_agent} = a.{agent_id} AND r.{run_state} IN ({mine})
              AND r.{run_deleted} IS NULL),
          EXISTS (SELECT 1 FROM {link} l JOIN {queues} q ON q.{queue_id} = l.{link_queue}
                   WHERE l.{link_agent} = a.{agent_id} AND NOT q.{paused}
                     AND EXISTS (SELECT 1 FROM {runs} r WHERE r.{run_queue} = q.{queue_id}
                                    AND r.{run_state} IN ({due}) AND r.{run_start} <= %s AND r.{run_deleted} IS NULL))
          FROM {agents} a WHERE a.{agent_id} = %s AND a.{_quoted(Agent, 'workspace')} = %s
    """


# --- claim ---


def insert_history_of_locked_rows(model, ids, *, to_state, message, actor, user_id, now):
    """The history rows of moving the rows `ids` of `model` (FlowRun or TaskRun) to `to_state`, one
    INSERT … SELECT that reads each row's from-state from the row itself; run it before the UPDATE.

    The caller holds the rows locked (select_for_update; SQLite's IMMEDIATE transaction), so the state
    read here is the one it read and is about to move from. Measured on a claim of 200 runs: 0.3 ms of
    CPU where bulk_create's 200 model instances cost 4.4 ms.
    """
    if not ids:
        return
    meta = model._meta
    pk = _quote(meta.pk.column)
    flow_run_id, task_run_id = (_quoted(model, "flow_run"), pk) if model is TaskRun else (pk, "NULL")
    if connection.vendor == "postgresql":
        where, id_params = f"{pk} = ANY(%s::{meta.pk.db_type(connection)}[])", [_array(ids)]
    else:
        prep = meta.pk.get_db_prep_value
        where, id_params = f"{pk} IN ({', '.join(['%s'] * len(ids))})", [prep(id_, connection) for id_ in ids]
    timestamp = StateChange._meta.get_field("timestamp").get_db_prep_value(now, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            _history_of_rows(flow_run_id, task_run_id, _quoted(model, "state"), f"{_quoted(model)} WHERE {where}"),
            [to_state, message, actor, user_id, timestamp, *id_params])


def _history_of_rows(flow_run_id, task_run_id, from_state, source):
    """INSERT … SELECT of one history row per row of `source` (SQL after FROM), its run, task run and
    from-state the expressions given; the parameters: to-state, message, actor, user id, timestamp."""
    fields = _history_fields()
    assert [f.name for f in fields] == list(_HISTORY_FIELDS)  # the order of the SELECT below
    return (f"INSERT INTO {_quoted(StateChange)} ({_columns(fields)}) "
            f"SELECT {flow_run_id}, {task_run_id}, {from_state}, %s, %s, %s, %s, NULL, %s FROM {source}")


def _array(ids):
    """PostgreSQL's array literal of `ids` (UUIDs or integers: no character in them needs quoting)."""
    return "{" + ",".join(map(str, ids)) + "}"


class _AnyOf(Lookup):
    """`lhs = ANY(%s::type[])` with the ids as one array literal (PostgreSQL).

    Django's `pk__in` prepares each of its values and psycopg quotes each one into a statement that is
    new every time (its length varies), which cost 0.5 ms of a claim's 200 ids per statement."""

    lookup_name = "any_of"  # never registered: used as an expression, by pk_in() only
    prepare_rhs = False

    def get_prep_lookup(self):
        return self.rhs

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s::{self.lhs.output_field.db_type(connection)}[])", [*lhs_params, _array(self.rhs)]


def pk_in(ids):
    """A filter() condition: the primary key is one of `ids` (a list). Same rows as `pk__in=ids`, which
    it is on SQLite."""
    if connection.vendor == "postgresql":
        return _AnyOf(F("pk"), list(ids))
    return Q(pk__in=ids)


def _col(model, alias, name):
    """`alias.column` of the field `name` ("pk": the primary key) of `model` as `alias` names it."""
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    return f"{alias}.{_quote(field.column)}"


def version_at_claim():
    """runs.versions.version_at_claim() written out: the same CASE, as one RawSQL the UPDATE takes as it
    is. Django resolving the ORM's Case, Coalesce and two Subqueries cost 1.4 ms of a claim's CPU per
    UPDATE; tests/agent/test_claiming.py pins the two to the same versions."""
    run = _quoted(FlowRun)  # the row being updated, by its table's name
    # Schedule.objects: schedules not deleted; at most one latest version per flow (one_latest_version).
    pinned = (f"SELECT {_col(Schedule, 'pin', 'flow_version')} FROM {_quoted(Schedule)} pin "
              f"WHERE {_col(Schedule, 'pin', 'pk')} = {_col(FlowRun, run, 'schedule')} "
              f"AND {_col(Schedule, 'pin', 'deleted_at')} IS NULL LIMIT 1")
    latest = (f"SELECT {_col(FlowVersion, 'latest', 'pk')} FROM {_quoted(FlowVersion)} latest "
              f"WHERE {_col(FlowVersion, 'latest', 'flow')} = {_col(FlowRun, run, 'flow')} "
              f"AND {_col(FlowVersion, 'latest', 'is_latest')} LIMIT 1")
    return RawSQL(f"CASE WHEN {_col(FlowRun, run, 'schedule')} IS NULL THEN {_col(FlowRun, run, 'flow_version')} "
                  f"ELSE COALESCE(({pinned}), ({latest}), {_col(FlowRun, run, 'flow_version')}) END", [],
                  output_field=BigIntegerField())


# The columns of a claimed run as runs.claiming.ClaimedRun holds them: the run's own, then its flow's
# name, its version's and its queue's (NULL when it has none), read from `r` joined to f, v and q.
_CLAIMED_RUN_COLUMNS = (
    *((FlowRun, "r", name) for name in ("pk", "name", "state", "scheduled_start", "parameters", "workspace",
                                        "token_generation", "agent", "work_queue", "flow_version")),
    (Flow, "f", "name"), (FlowVersion, "v", "entrypoint"), (FlowVersion, "v", "parameters"),
    (FlowVersion, "v", "job_env"), (FlowVersion, "v", "secrets"), (WorkQueue, "q", "name"), (WorkQueue, "q", "job_env"))


def _claimed_run_select(source, extra=()):
    """SELECT the claimed-run columns (and `extra`) of the runs `source` names as r (a table or a
    WITH query), with their flow, version and queue.

    The scheduled start comes as ISO 8601 text in UTC, whatever the session's DateStyle and TimeZone,
    for datetime.fromisoformat: Django's timestamptz loader (Python, to set the time zone) cost 0.7 ms
    of CPU for a claim's 200 rows, the text and its parsing 0.1 ms."""
    columns = [_col(*column) for column in _CLAIMED_RUN_COLUMNS]
    assert _CLAIMED_RUN_COLUMNS[3][2] == "scheduled_start"
    columns[3] = f"""to_char({columns[3]} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
    columns = ", ".join([*columns, *extra])
    return (f"SELECT {columns} FROM {source} "
            f"INNER JOIN {_quoted(Flow)} f ON {_col(FlowRun, 'r', 'flow')} = {_col(Flow, 'f', 'pk')} "
            f"LEFT OUTER JOIN {_quoted(FlowVersion)} v ON {_col(FlowRun, 'r', 'flow_version')} = "
            f"{_col(FlowVersion, 'v', 'pk')} "
            f"LEFT OUTER JOIN {_quoted(WorkQueue)} q ON {_col(FlowRun, 'r', 'work_queue')} = {_col(WorkQueue, 'q', 'pk')}")


def _claimed_runs_of(rows):
    """Rows of _claimed_run_select as ClaimedRun's tuples (and what follows them), the JSON decoded.

    jsonb comes as text (Django's loader); JSONField.from_db_value's json.loads, once per distinct text
    of a version or queue. A run's own parameters are its own object, as the ORM gives them (most are
    empty: a new dict without the decoder)."""
    shared = {}

    def load(text):
        if text is None:
            return None
        if text not in shared:
            shared[text] = json.loads(text)
        return shared[text]

    return [(*row[:3], datetime.fromisoformat(row[3]), {} if row[4] == "{}" else json.loads(row[4]), *row[5:12],
             load(row[12]), load(row[13]), load(row[14]), row[15], load(row[16]), *row[17:]) for row in rows]


@functools.cache
def _claimed_run_rows_sql():
    return (f"{_claimed_run_select(f'{_quoted(FlowRun)} r')} "
            f"WHERE {_col(FlowRun, 'r', 'pk')} = ANY(%s::{FlowRun._meta.pk.db_type(connection)}[]) AND {_col(FlowRun, 'r', 'agent')} = %s "
            f"AND {_col(FlowRun, 'r', 'state')} = %s AND {_col(FlowRun, 'r', 'deleted_at')} IS NULL "
            f"ORDER BY {_col(FlowRun, 'r', 'scheduled_start')} ASC")


def claimed_run_rows(agent_id, run_ids):
    """PostgreSQL: the runs of `run_ids` still SUBMITTED to `agent_id` and not deleted, oldest scheduled
    start first, as tuples in the order of runs.claiming.ClaimedRun's fields; its `handed_out` reads
    the same rows with the ORM on SQLite (the twin tests/agent/test_claiming.py compares with this).

    Measured on a claim of 200 runs: the ORM's values_list spent 1.5 ms of CPU more on compiling and on
    its converters, decoding each run's version and queue JSON anew; here each distinct one is decoded once.
    """
    with connection.cursor() as cursor:
        cursor.execute(_claimed_run_rows_sql(), [_array(run_ids), agent_id, State.SUBMITTED])
        return _claimed_runs_of(cursor.fetchall())


def claim_runs(agent_id, free, capped, limit, now, message, actor, event_name):
    """PostgreSQL: move up to `limit` due runs (SCHEDULED or LATE, started at `now` or before, not
    deleted) to SUBMITTED for `agent_id`, oldest scheduled start first, in one statement; returns them
    as tuples of runs.claiming.ClaimedRun's fields followed by the JSON text of the run's event
    `event_name` (events.emit.Encoded).

    `free`: ids of the queues without a concurrency limit; `capped`: [(queue id, free slots)] of the
    others (the caller holds them locked and counted). The picks (one for the free queues, one per
    capped queue) are WITH queries evaluated once (MATERIALIZED), their rows locked as read, a row
    another claim holds skipped: as a subquery of the UPDATE (`id IN (SELECT … FOR UPDATE SKIP
    LOCKED LIMIT n)`) PostgreSQL may run a pick again for each row it joins and move more than
    `limit` runs (tests/agent/test_claiming.py forces that plan). The history rows are
    written from the picked rows' own from-states, and the answer is read from the UPDATE's RETURNING,
    so a claim of 200 runs is one round trip and no read after it (runs.claiming.handed_out).

    What the move writes is runs.states' transition to SUBMITTED with the agent and the version at
    claim (version_at_claim), as runs.claiming._submit_to writes it through the ORM, and each event is
    the one runs.states makes for a moved row (its related ids as the row had them before the move),
    built and encoded by PostgreSQL: in Python, 200 events and their encoding were a fifth of a
    claim's CPU. The twin test in tests/agent/test_claiming.py compares the rows, their history and
    their events.
    """
    picks = [(_array(free) if len(free) > 1 else free[0], limit)] if free else []  # (queue(s), how many)
    picks += [(queue, min(slots, limit)) for queue, slots in capped]
    params = []
    for queue, take in picks:
        params += [queue, State.SCHEDULED, State.LATE, now, take]
    timestamp = StateChange._meta.get_field("timestamp").get_db_prep_value(now, connection)
    params += [limit, State.SUBMITTED, message, actor, None, timestamp,
               State.SUBMITTED, timestamp, message, agent_id,
               now.isoformat(), event_name, State.SUBMITTED, message, actor]
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(min(len(free), 2), len(capped)), params)
        return _claimed_runs_of(cursor.fetchall())


def _transition_event_json(alias, before):
    """SQL for the JSON text of the event runs.states makes for a flow run `alias` moved from state
    `before["state"]` (_event: its id, workspace, time and name, the run, the related ids that are
    set, the payload); `before` maps other columns the move changed to their values before it. The
    parameters: the time (ISO text), the event's name, the to-state, the message and the actor."""
    from runs.states import FLOW  # runs.states imports this module

    related = ", ".join(
        f"CASE WHEN {column} IS NOT NULL THEN jsonb_build_object('kind', '{kind}', 'id', {column}::text) END"
        for kind, column in ((kind, before.get(path, f"{alias}.{_quote(path)}")) for kind, path in FLOW.related_paths))
    return (f"json_build_object('id', gen_random_uuid(), 'workspace_id', {alias}.{_quoted(FlowRun, 'workspace')}, "
            f"'occurred', %s::text, 'name', %s::text, "
            f"'resource', json_build_object('kind', '{FLOW.event_prefix}', 'id', {alias}.{_quote(FlowRun._meta.pk.column)}), "
            f"'related', array_to_json(array_remove(ARRAY[{related}], NULL)), "
            f"'payload', json_build_object('from', {before['state']}, 'to', %s::text, 'message', %s::text, "
            f"'actor', %s::text))::text")


@functools.lru_cache(maxsize=32)
def _claim_sql(free_queues, capped_queues):
    """The claim's statement for no (0), one (1) or several (2) queues without a limit and
    `capped_queues` with one."""
    runs, pk = _quoted(FlowRun), _quoted(FlowRun, "id")
    queue, state, start, agent = (_quoted(FlowRun, name) for name in ("work_queue", "state", "scheduled_start", "agent"))
    picks = []
    for i in range(bool(free_queues) + capped_queues):
        on = f"= ANY(%s::{WorkQueue._meta.pk.db_type(connection)}[])" if i == 0 and free_queues > 1 else "= %s"
        # Written as runs.claiming._due: in the order of the partial index flowrun_claimable's
        # predicate (SCHEDULED, LATE), so that the planner sees it applies.
        picks.append(f"pick{i} AS MATERIALIZED (SELECT {pk}, {state}, {start}, {agent} FROM {runs} "
                     f"WHERE {queue} {on} AND {state} IN (%s, %s) AND {start} <= %s "
                     f"AND {_quoted(FlowRun, 'deleted_at')} IS NULL "
                     f"ORDER BY {start} LIMIT %s FOR UPDATE SKIP LOCKED)")
    union = " UNION ALL ".join(f"SELECT * FROM pick{i}" for i in range(len(picks)))
    moved_from, agent_before = _quote("claimed_from"), _quote("agent_before")
    set_version = version_at_claim().sql
    event = _transition_event_json(
        "r", {"state": f"r.{moved_from}", "agent_id": f"r.{agent_before}"})  # as the rows were before the move
    return (
        f"WITH {', '.join(picks)}, "
        f"chosen AS MATERIALIZED (SELECT * FROM ({union}) picked ORDER BY {start} LIMIT %s), "
        f"history AS ({_history_of_rows(f'chosen.{pk}', 'NULL', f'chosen.{state}', 'chosen')}), "
        f"moved AS (UPDATE {runs} SET {state} = %s, {_quoted(FlowRun, 'state_changed')} = %s, "
        f"{_quoted(FlowRun, 'token_generation')} = {runs}.{_quoted(FlowRun, 'token_generation')} + 1, "
        f"{_quoted(FlowRun, 'state_message')} = %s, {agent} = %s, "
        f"{_quoted(FlowRun, 'flow_version')} = {set_version} "
        f"FROM chosen WHERE {runs}.{pk} = chosen.{pk} "
        f"RETURNING {runs}.*, chosen.{state} AS {moved_from}, chosen.{agent} AS {agent_before}) "
        f"{_claimed_run_select('moved r', (event,))} "
        f"ORDER BY {_col(FlowRun, 'r', 'scheduled_start')} ASC"
    )


# --- create a run ---
# POST …/flow_runs/ (runs/api/flow_runs.py, through runs/scheduling.py's create_manual_run) made
# four ORM queries for the flow, its latest version and the default queue, then get_or_create's
# SELECT, SAVEPOINT, INSERT and RELEASE and the history's INSERT inside BEGIN … COMMIT: building
# them and the round trips were most of the request's CPU. Here the lookups are one query, and on
# PostgreSQL the run and its history row one statement that writes nothing when the idempotency key
# is taken (the unique (workspace, idempotency_key) constraint settles a race, as before).
# Measured (make bench BENCH_ARGS=http, 2 cores, shared): 6.62 -> 1.45 ms server CPU per request.


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
    db = connections[DEFAULT_DB_ALIAS]
    row = _bound_fetch(db, _manual_run_target_sql(db.vendor), [queue_name, workspace_id, flow_name])
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
        # Its one row, when it made one, says so: the statement is prepared (`_bound_fetch`).
        return ((f'WITH run AS ({insert_run} RETURNING {_quoted(FlowRun, "id")}) '
                 f'INSERT INTO {_quoted(StateChange)} ({history_columns}) '
                 f'SELECT run.{_quoted(FlowRun, "id")}, {placeholders} FROM run RETURNING 1',),
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
        created = _bound_fetch(connections[DEFAULT_DB_ALIAS], statements[0], run_values + history_values) is not None
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


# --- state change ---
# A user's state change (FlowRunViewSet.set_state, cancel, retry): the ORM's query building for the
# run's five joins, the conditional UPDATE, the refresh after it and the history with its people and
# agents were most of the request's CPU (issue 16: 5.6 ms in-process, 0.25 of it a ping's). The ORM
# twins are FlowRunViewSet.get_object with the viewset's select_related, _set_state's ORM branch
# with refresh_from_db, and FlowRunDetailSerializer; tests/api/test_flow_runs.py pins that the
# answers agree.


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
    row = _bound_fetch(db, _run_to_change_sql(db.vendor), [FlowRun._meta.pk.get_db_prep_value(run_id, db), workspace_id])
    if row is None:
        return None
    run = FlowRun.from_db(db.alias, fields, _convert(db, FlowRun, fields, row[:len(fields)]))
    return run, dict(zip(RUN_NAMES, row[len(fields):]))


@functools.cache
def _run_to_change_sql(vendor):
    fields = run_fields()
    run_table = _quoted(FlowRun)
    joins, names = _names_sql(run_table)
    return (
        f"SELECT {', '.join(f'{run_table}.{_quoted(FlowRun, f)}' for f in fields)}, {names} "
        f"FROM {run_table} {joins} WHERE {_listed_run_sql(run_table, 'n0')}"
    )


def _names_sql(run):
    """(LEFT JOINs n0, n1, … of what the run `run` (an alias) names, in RUN_NAMES order (n0 its
    flow), the names they show, comma-separated)."""
    joins, names = [], []
    for i, name in enumerate(RUN_NAMES):
        model = FlowRun._meta.get_field(name).related_model
        joins.append(f"LEFT JOIN {_quoted(model)} n{i} ON n{i}.{_quote(model._meta.pk.column)} = "
                     f"{run}.{_quoted(FlowRun, name)}")
        names.append(f"n{i}.{_quoted(model, _shown(model))}")
    return " ".join(joins), ", ".join(names)


def _listed_run_sql(run, flow):
    """The condition for the run `run` (an alias) of the URL: the one with id and workspace the first
    two parameters, listed as FlowRun.objects.listed() lists runs: neither it nor its flow `flow` (an
    alias) nor its schedule marked deleted (a run of no schedule is listed)."""
    return (f"{run}.{_quote(FlowRun._meta.pk.column)} = %s AND {run}.{_quoted(FlowRun, 'workspace')} = %s "
            f"AND {run}.{_quoted(FlowRun, 'deleted_at')} IS NULL AND {flow}.{_quoted(Flow, 'deleted_at')} IS NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {_quoted(Schedule)} s WHERE s.{_quote(Schedule._meta.pk.column)} = "
            f"{run}.{_quoted(FlowRun, 'schedule')} AND s.{_quoted(Schedule, 'deleted_at')} IS NOT NULL)")


def move_flow_run(run_id, from_state, values, change, *, history=False):
    """UPDATE the run to `values` ({attname: plain value}) if it is still in `from_state`, and then
    INSERT its history row `change` (an unsaved StateChange); its columns are the run's as the
    UPDATE left them (run_fields() order), or None, with no row written, if it moved meanwhile.

    _set_state's conditional update without a fence or SQL expressions, with RETURNING in place of
    the refresh after it (PostgreSQL, SQLite ≥ 3.35: connection.features.can_return_columns_from_insert).
    On PostgreSQL one statement does both (the INSERT reads the UPDATE's row), a round trip fewer,
    its parameters bound by the server (`_server_bound`: the statement is prepared, and PostgreSQL
    took 0.4 ms to plan it); the caller's transaction holds them together either way.

    Returns (columns, history). With `history` on PostgreSQL, the same statement reads the run's
    history as run_history() gives it, new row included (the API answers a state change with it: its
    own round trip was a sixth of the request's CPU); elsewhere, without `history`, and when the run
    moved meanwhile, history is None. The statement reads the earlier rows as they were when it
    began, which only differs from a read after it where another transaction wrote a history row
    for the run without moving it."""
    meta, db = FlowRun._meta, connections[DEFAULT_DB_ALIAS]
    moving = [meta.get_field(name).get_db_prep_save(value, db) for name, value in values.items()]
    moving += [meta.pk.get_db_prep_value(run_id, db), from_state]
    adding = [field.get_db_prep_save(getattr(change, field.attname), db) for field in _history_fields()]
    read = None
    if db.vendor == "postgresql":
        row = _bound_fetch(db, _move_and_add_sql(db.vendor, tuple(values), history), moving + adding[1:])
        if row is not None and history:
            row, read = row[:-1], [_shown_history_entry(entry) for entry in row[-1]]
    else:
        with db.cursor() as cursor:
            cursor.execute(_move_flow_run_sql(db.vendor, tuple(values)), moving)
            row = cursor.fetchone()
            if row is not None:
                cursor.execute(_add_history_row_sql(db.vendor), adding)
    return (None if row is None else _convert(db, FlowRun, run_fields(), row)), read


@functools.lru_cache(maxsize=64)
def _move_flow_run_sql(vendor, names):
    meta = FlowRun._meta
    assignments = ", ".join(f"{_quote(meta.get_field(name).column)} = %s" for name in names)
    return (f"UPDATE {_quoted(FlowRun)} SET {assignments} WHERE {_quote(meta.pk.column)} = %s "
            f"AND {_quoted(FlowRun, 'state')} = %s RETURNING {', '.join(_quoted(FlowRun, f) for f in run_fields())}")


@functools.lru_cache(maxsize=128)
def _move_and_add_sql(vendor, names, history=False):
    """The UPDATE, and the INSERT of the history row for the run it returned (none if it returned
    none): a data-modifying WITH runs exactly once, whether or not the outer SELECT reads it.
    `history`: one more column, the run's history (run_history()'s columns and order) as a JSON
    array of arrays: the rows before the statement, read from its snapshot, and the one it adds."""
    head = (f"WITH moved AS ({_move_flow_run_sql(vendor, names)}), "
            f"added AS ({_add_history_of_moved_sql(from_the_row=False, history=history)}) ")
    if not history:
        return f"{head}SELECT * FROM moved"
    return f"{head}SELECT moved.*, {_history_json_sql()} FROM moved"


# The history row's fields _add_history_of_moved_sql takes from the moved row (by `from_the_row`), not from parameters.
_TAKEN_FROM_THE_ROW = {False: ("flow_run",), True: ("flow_run", "from_state")}


def _add_history_of_moved_sql(*, from_the_row, history):
    """The INSERT … SELECT of the history row of the run in the WITH query `moved`: its flow run
    (and with `from_the_row` its from-state, `moved`'s column from_state) taken from that row, the
    rest parameters in _HISTORY_FIELDS order; RETURNING what the history shows when `history`."""
    fields = _history_fields()
    taken = {"flow_run": f"moved.{_quote(FlowRun._meta.pk.column)}", "from_state": "moved.from_state"}
    taken = {name: taken[name] for name in _TAKEN_FROM_THE_ROW[from_the_row]}
    returning = f" RETURNING {_history_listed()}" if history else ""
    return (f"INSERT INTO {_quoted(StateChange)} ({_columns(fields)}) "
            f"SELECT {', '.join(taken.get(field.name, '%s') for field in fields)} FROM moved{returning}")


def _history_listed():
    return ", ".join([_quote(StateChange._meta.pk.column), *(_quoted(StateChange, name) for name in _SHOWN_HISTORY),
                      _quoted(StateChange, "user"), _quoted(StateChange, "agent")])


def _history_json_sql():
    """The history of the run in `moved` as a JSON array of arrays (run_history()'s columns and
    order, people and agents by name): its rows as the statement's snapshot has them, and the one
    the WITH query `added` inserts."""
    user_model, listed = get_user_model(), _history_listed()
    shown = ", ".join([*(f"h.{_quoted(StateChange, name)}" for name in _SHOWN_HISTORY),
                       f"u.{_quoted(user_model, _shown(user_model))}", f"a.{_quoted(Agent, _shown(Agent))}"])
    order = f"h.{_quoted(StateChange, 'timestamp')}, h.{_quote(StateChange._meta.pk.column)}"
    return (f"(SELECT json_agg(json_build_array({shown}) ORDER BY {order}) FROM ("
            f"SELECT {listed} FROM {_quoted(StateChange)} WHERE {_quoted(StateChange, 'flow_run')} = "
            f"moved.{_quote(FlowRun._meta.pk.column)} UNION ALL SELECT {listed} FROM added) h "
            f"LEFT JOIN {_quoted(user_model)} u ON u.{_quote(user_model._meta.pk.column)} = h.{_quoted(StateChange, 'user')} "
            f"LEFT JOIN {_quoted(Agent)} a ON a.{_quote(Agent._meta.pk.column)} = h.{_quoted(StateChange, 'agent')})")


def change_listed_flow_run(run_id, workspace_id, from_states, expected_state, values, change):
    """A user's state change of a run as one statement (PostgreSQL): find the run as run_to_change()
    does, UPDATE it to `values` ({attname: plain value}) if its state is one of `from_states` (and
    is `expected_state`, when given), INSERT its history row `change` (an unsaved StateChange; its
    run and from-state are taken from the row), and read its names and its history.

    Returns None when there is no such run (a 404), else (the state the statement found it in,
    None when it did not move it: its state is not one of those, or it moved meanwhile; else
    (columns in run_fields() order, {foreign key name: name}, the history as run_history() gives
    it)). The general path read the run first and then moved it: two round trips, and the read with
    its conversion was about a third of the request's CPU in-process."""
    meta, db = FlowRun._meta, connections[DEFAULT_DB_ALIAS]
    params = [meta.pk.get_db_prep_value(run_id, db), workspace_id]
    params += [meta.get_field(name).get_db_prep_save(value, db) for name, value in values.items()]
    if expected_state is not None:
        params.append(expected_state)
    params += [field.get_db_prep_save(getattr(change, field.attname), db) for field in _history_fields()
               if field.name not in _TAKEN_FROM_THE_ROW[True]]
    row = _bound_fetch(db, _change_listed_sql(tuple(values), tuple(from_states), expected_state is not None), params)
    if row is None:
        return None
    found, row, fields = row[0], row[1:], run_fields()
    if row[0] is None:
        return found, None
    # The moved row's from_state column (row[len(fields)]) is `found`: the UPDATE required it.
    names = dict(zip(RUN_NAMES, row[len(fields) + 1:-1]))
    return found, (_convert(db, FlowRun, fields, row[:len(fields)]), names,
                   [_shown_history_entry(entry) for entry in row[-1]])


@functools.lru_cache(maxsize=64)
def _change_listed_sql(names, from_states, expected):
    meta, fields = FlowRun._meta, run_fields()
    run_table, pk, state = _quoted(FlowRun), _quote(meta.pk.column), _quoted(FlowRun, "state")
    # The run as run_to_change() finds it.
    target = (f"SELECT r.{pk}, r.{state} FROM {run_table} r JOIN {_quoted(Flow)} f "
              f"ON f.{_quote(Flow._meta.pk.column)} = r.{_quoted(FlowRun, 'flow')} WHERE {_listed_run_sql('r', 'f')}")
    # The row's own state is compared with the one read: a run moved by another transaction after
    # this statement's snapshot is checked again as that transaction left it, and does not move.
    assignments = ", ".join(f"{_quote(meta.get_field(name).column)} = %s" for name in names)
    expecting = f" AND target.{state} = %s" if expected else ""
    moved = (f"UPDATE {run_table} SET {assignments} FROM target WHERE {run_table}.{pk} = target.{pk} "
             f"AND {run_table}.{state} = target.{state} AND target.{state} IN ({_literals(*from_states)}){expecting} "
             f"RETURNING {', '.join(f'{run_table}.{_quoted(FlowRun, f)}' for f in fields)}, "
             f"target.{state} AS from_state")
    joins, names = _names_sql("moved")
    return (f"WITH target AS ({target}), moved AS ({moved}), "
            f"added AS ({_add_history_of_moved_sql(from_the_row=True, history=True)}) "
            f"SELECT target.{state}, moved.*, {names}, {_history_json_sql()} "
            f"FROM target LEFT JOIN moved ON true {joins}")


def _shown_history_entry(entry):
    """A history row of _move_and_add_sql's JSON as run_history() gives it: its timestamp, JSON
    text there (ISO 8601 with the session's offset), an aware datetime in UTC."""
    entry = dict(zip((*_SHOWN_HISTORY, "user", "agent"), entry))
    entry["timestamp"] = datetime.fromisoformat(entry["timestamp"]).astimezone(dt_timezone.utc)
    return entry


_HISTORY_FIELDS = ("flow_run", "task_run", "from_state", "to_state", "message", "actor", "user", "agent", "timestamp")


@functools.cache
def _history_fields():
    return [StateChange._meta.get_field(name) for name in _HISTORY_FIELDS]


@functools.cache
def _add_history_row_sql(vendor):
    fields = _history_fields()
    return (f"INSERT INTO {_quoted(StateChange)} ({_columns(fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})")


_SHOWN_HISTORY = ("from_state", "to_state", "message", "actor", "timestamp")


def run_history(run_id):
    """The run's history as its answer shows it (StateChange's ordering): each row a dict of
    from_state, to_state, message, actor, timestamp, and user / agent as their names (or None)."""
    db = connections[DEFAULT_DB_ALIAS]
    rows = _bound_fetch(db, _run_history_sql(db.vendor), [FlowRun._meta.pk.get_db_prep_value(run_id, db)], every=True)
    history = []
    for row in rows:
        entry = dict(zip(_SHOWN_HISTORY, _convert(db, StateChange, _SHOWN_HISTORY, row[:5])))
        entry["user"], entry["agent"] = row[5], row[6]
        history.append(entry)
    return history


@functools.cache
def _run_history_sql(vendor):
    table, user_model = _quoted(StateChange), get_user_model()
    return (
        f"SELECT {', '.join(f'{table}.{_quoted(StateChange, f)}' for f in _SHOWN_HISTORY)}, "
        f"u.{_quoted(user_model, _shown(user_model))}, a.{_quoted(Agent, _shown(Agent))} FROM {table} "
        f"LEFT JOIN {_quoted(user_model)} u ON u.{_quote(user_model._meta.pk.column)} = "
        f"{table}.{_quoted(StateChange, 'user')} "
        f"LEFT JOIN {_quoted(Agent)} a ON a.{_quote(Agent._meta.pk.column)} = {table}.{_quoted(StateChange, 'agent')} "
        f"WHERE {table}.{_quoted(StateChange, 'flow_run')} = %s "
        f"ORDER BY {table}.{_quoted(StateChange, 'timestamp')}, {table}.{_quote(StateChange._meta.pk.column)}"
    )
