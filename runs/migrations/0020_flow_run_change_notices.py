"""On PostgreSQL, a change of state or attempt of a flow run that was RUNNING or CANCELLING (the
states a view holds, runs/beats_behind.py VIEWED_STATES), and any deletion of runs, is announced
on the channel `orchestrator_flow_run_changed` when it commits: the web processes' views of their
runs forget it at once. Changes from other states (a claim's 200 runs) announce nothing.

Triggers, so that every path that changes a run (the ORM, the hot paths' SQL, the services' bulk
updates) announces it; a heartbeat's UPDATE changes neither column and announces nothing. A deleting or
truncating statement announces "*" once (forget every run) instead of each row. Nothing on
SQLite: views are PostgreSQL's only."""

from django.db import migrations

CHANNEL = "orchestrator_flow_run_changed"

# No WHEN clause and no column list: PostgreSQL refuses to change the type of a column a trigger
# names ("cannot alter type of a column used in a trigger definition"), which would stop a later
# migration of `state`; the function tests the columns instead.
CREATE = f"""
CREATE FUNCTION orchestrator_flow_run_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN ('RUNNING', 'CANCELLING') AND (OLD.state IS DISTINCT FROM NEW.state
            OR OLD.token_generation IS DISTINCT FROM NEW.token_generation
            OR OLD.workspace_id IS DISTINCT FROM NEW.workspace_id) THEN
        PERFORM pg_notify('{CHANNEL}', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION orchestrator_flow_runs_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '*');
    RETURN NULL;
END $$;
CREATE TRIGGER flow_run_changed AFTER UPDATE ON {{table}} FOR EACH ROW
    EXECUTE FUNCTION orchestrator_flow_run_changed();
CREATE TRIGGER flow_runs_deleted AFTER DELETE ON {{table}} FOR EACH STATEMENT
    EXECUTE FUNCTION orchestrator_flow_runs_gone();
CREATE TRIGGER flow_runs_truncated AFTER TRUNCATE ON {{table}} FOR EACH STATEMENT
    EXECUTE FUNCTION orchestrator_flow_runs_gone();
"""

DROP = """
DROP TRIGGER IF EXISTS flow_runs_truncated ON {table};
DROP TRIGGER IF EXISTS flow_runs_deleted ON {table};
DROP TRIGGER IF EXISTS flow_run_changed ON {table};
DROP FUNCTION IF EXISTS orchestrator_flow_runs_gone();
DROP FUNCTION IF EXISTS orchestrator_flow_run_changed();
"""


def _run(sql):
    def operation(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            table = schema_editor.quote_name(apps.get_model("runs", "FlowRun")._meta.db_table)
            schema_editor.execute(sql.format(table=table))
    return operation


class Migration(migrations.Migration):

    dependencies = [
        ("runs", "0019_lean_indexes"),
    ]

    operations = [
        migrations.RunPython(_run(CREATE), _run(DROP)),
    ]
