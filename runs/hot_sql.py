"""SQL written by hand for the API's measured hot paths (issue 16): the ORM builds each query anew
on every request, and on these paths that building cost more CPU than the database's own work.

Each function here has a measured reason in `make bench BENCH_ARGS=http` and an ORM twin or test
that pins what it does; everything else stays with the ORM. Column and table names come from the
models' `_meta`, so a renamed field breaks loudly here instead of silently elsewhere.
"""

import json

from django.db import connection
from django.db.models import BigIntegerField, F, Lookup, Q
from django.db.models.expressions import RawSQL

from runs.models import Flow, FlowRun, FlowVersion, Schedule, State, StateChange, TaskRun, WorkQueue

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
    quote = connection.ops.quote_name
    meta = model._meta
    history = StateChange._meta
    columns = ", ".join(quote(history.get_field(name).column) for name in (
        "flow_run", "task_run", "from_state", "to_state", "message", "actor", "user", "agent", "timestamp"))
    if model is TaskRun:
        flow_run_id, task_run_id = quote(meta.get_field("flow_run").column), quote(meta.pk.column)
    else:
        flow_run_id, task_run_id = quote(meta.pk.column), "NULL"
    if connection.vendor == "postgresql":
        where, id_params = f"{quote(meta.pk.column)} = ANY(%s::{meta.pk.db_type(connection)}[])", [_array(ids)]
    else:
        prep = meta.pk.get_db_prep_value
        where, id_params = f"{quote(meta.pk.column)} IN ({', '.join(['%s'] * len(ids))})", [
            prep(pk, connection) for pk in ids]
    timestamp = history.get_field("timestamp").get_db_prep_value(now, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(history.db_table)} ({columns}) "
            f"SELECT {flow_run_id}, {task_run_id}, {quote(meta.get_field('state').column)}, %s, %s, %s, "
            f"%s, NULL, %s FROM {quote(meta.db_table)} WHERE {where}",
            [to_state, message, actor, user_id, timestamp, *id_params])


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


def version_at_claim():
    """runs.versions.version_at_claim() written out: the same CASE, as one RawSQL the UPDATE takes as it
    is. Django resolving the ORM's Case, Coalesce and two Subqueries cost 1.4 ms of a claim's CPU per
    UPDATE; tests/agent/test_claiming.py pins the two to the same versions."""
    quote = connection.ops.quote_name
    run, schedule, version = FlowRun._meta, Schedule._meta, FlowVersion._meta

    def col(meta, name, table=None):
        field = meta.pk if name == "pk" else meta.get_field(name)
        return f"{quote(table or meta.db_table)}.{quote(field.column)}"

    # Schedule.objects: schedules not deleted; at most one latest version per flow (one_latest_version).
    pinned = (f"SELECT {col(schedule, 'flow_version', 'pin')} FROM {quote(schedule.db_table)} {quote('pin')} "
              f"WHERE {col(schedule, 'pk', 'pin')} = {col(run, 'schedule')} "
              f"AND {col(schedule, 'deleted_at', 'pin')} IS NULL LIMIT 1")
    latest = (f"SELECT {col(version, 'pk', 'latest')} FROM {quote(version.db_table)} {quote('latest')} "
              f"WHERE {col(version, 'flow', 'latest')} = {col(run, 'flow')} AND {col(version, 'is_latest', 'latest')} "
              f"LIMIT 1")
    return RawSQL(f"CASE WHEN {col(run, 'schedule')} IS NULL THEN {col(run, 'flow_version')} "
                  f"ELSE COALESCE(({pinned}), ({latest}), {col(run, 'flow_version')}) END", [],
                  output_field=BigIntegerField())


def claimed_run_rows(agent_id, run_ids):
    """PostgreSQL: the runs of `run_ids` still SUBMITTED to `agent_id` and not deleted, oldest scheduled
    start first, as tuples in the order of runs.claiming.ClaimedRun's fields; its `handed_out` reads
    the same rows with the ORM on SQLite (the twin tests/agent/test_claiming.py compares with this).

    Measured on a claim of 200 runs: the ORM's values_list spent 1.5 ms of CPU more on compiling and on
    its converters, decoding each run's version and queue JSON anew; here each distinct one is decoded once.
    """
    quote = connection.ops.quote_name
    run, flow, version, queue = FlowRun._meta, Flow._meta, FlowVersion._meta, WorkQueue._meta

    def col(meta, alias, name):
        field = meta.pk if name == "pk" else meta.get_field(name)
        return f"{quote(alias)}.{quote(field.column)}"

    columns = ", ".join([
        *(col(run, "r", name) for name in ("pk", "name", "state", "scheduled_start", "parameters", "workspace",
                                          "token_generation", "agent", "work_queue", "flow_version")),
        col(flow, "f", "name"), col(version, "v", "entrypoint"), col(version, "v", "parameters"),
        col(version, "v", "job_env"), col(version, "v", "secrets"), col(queue, "q", "name"), col(queue, "q", "job_env"),
    ])
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {quote(run.db_table)} {quote('r')} "
            f"INNER JOIN {quote(flow.db_table)} {quote('f')} ON {col(run, 'r', 'flow')} = {col(flow, 'f', 'pk')} "
            f"LEFT OUTER JOIN {quote(version.db_table)} {quote('v')} "
            f"ON {col(run, 'r', 'flow_version')} = {col(version, 'v', 'pk')} "
            f"LEFT OUTER JOIN {quote(queue.db_table)} {quote('q')} "
            f"ON {col(run, 'r', 'work_queue')} = {col(queue, 'q', 'pk')} "
            f"WHERE {col(run, 'r', 'pk')} = ANY(%s::{run.pk.db_type(connection)}[]) AND {col(run, 'r', 'agent')} = %s "
            f"AND {col(run, 'r', 'state')} = %s AND {col(run, 'r', 'deleted_at')} IS NULL "
            f"ORDER BY {col(run, 'r', 'scheduled_start')} ASC",
            [_array(run_ids), agent_id, State.SUBMITTED])
        rows = cursor.fetchall()
    # jsonb comes as text (Django's loader); JSONField.from_db_value's json.loads, once per distinct text
    # of a version or queue. A run's own parameters are its own object, as the ORM gives them.
    shared = {}

    def load(text):
        if text is None:
            return None
        if text not in shared:
            shared[text] = json.loads(text)
        return shared[text]

    return [(*row[:4], json.loads(row[4]), *row[5:12], load(row[12]), load(row[13]), load(row[14]), row[15],
             load(row[16])) for row in rows]
