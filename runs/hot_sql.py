"""SQL written by hand for the API's measured hot paths (issue 16): the ORM builds each query anew
on every request, and on these paths that building cost more CPU than the database's own work.

Each function here has a measured reason in `make bench BENCH_ARGS=http` and an ORM twin or test
that pins what it does; everything else stays with the ORM. Column and table names come from the
models' `_meta`, so a renamed field breaks loudly here instead of silently elsewhere.
"""

from django.db import connection, transaction


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
    it (≥ 3.35), else one read by primary key.
    """
    from runs.models import FlowRun

    table = connection.ops.quote_name(FlowRun._meta.db_table)
    returning = ", ".join(_column(FlowRun, name) for name in BEAT_FIELDS)
    update = (f"UPDATE {table} SET {_column(FlowRun, 'last_heartbeat')} = %s "
              f"WHERE {_column(FlowRun, 'id')} = %s AND {_column(FlowRun, 'workspace')} = %s "
              f"AND {_column(FlowRun, 'token_generation')} = %s")
    params = [FlowRun._meta.get_field("last_heartbeat").get_db_prep_value(now, connection),
              FlowRun._meta.pk.get_db_prep_value(run_id, connection), workspace_id, generation]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL synchronous_commit TO OFF; {update} RETURNING {returning}", params)
            cursor.nextset()  # past the SET's result to the UPDATE's
            return cursor.fetchone()
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.features.can_return_columns_from_insert:
            cursor.execute(f"{update} RETURNING {returning}", params)
            return cursor.fetchone()
        cursor.execute(update, params)
        if not cursor.rowcount:
            return None
    return FlowRun.objects.filter(pk=run_id).values_list(*(f"{name}_id" if name != "state" else name
                                                           for name in BEAT_FIELDS)).first()
