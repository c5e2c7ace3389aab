"""Migration 0020's announcement also for a change of the ids a beat's event names (flow, work
queue, agent): a view (runs/beats_behind.py) answers a beat with the ids it read, and a queue or
agent deleted while its run is RUNNING sets the run's column to NULL with no change of state. The
view forgets such a run, and its next beat reads the ids again, as the database would answer."""

from django.db import migrations

CHANNEL = "orchestrator_flow_run_changed"


def _function(columns):
    changed = "\n            OR ".join(f"OLD.{column} IS DISTINCT FROM NEW.{column}" for column in columns)
    return f"""
CREATE OR REPLACE FUNCTION orchestrator_flow_run_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN ('RUNNING', 'CANCELLING') AND ({changed}) THEN
        PERFORM pg_notify('{CHANNEL}', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;
"""


BEFORE = ("state", "token_generation", "workspace_id")
AFTER = BEFORE + ("flow_id", "work_queue_id", "agent_id")


def _run(columns):
    def operation(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(_function(columns))
    return operation


class Migration(migrations.Migration):

    dependencies = [
        ("runs", "0020_flow_run_change_notices"),
    ]

    operations = [
        migrations.RunPython(_run(AFTER), _run(BEFORE)),
    ]
