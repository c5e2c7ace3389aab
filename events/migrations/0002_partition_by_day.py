"""On PostgreSQL the events table becomes partitioned by day (events/partitions.py manages the days).

Django has no declarative partitioning, so the table made by 0001 is replaced by one made here with
the same columns and indexes, a primary key of (id, occurred) as partitioning requires, a default
partition, the days around today, and a foreign key that cascades a workspace's deletion in the
database. Other databases keep 0001's plain table.
"""

from datetime import timedelta

from django.db import migrations
from django.utils import timezone

DDL = """
DROP TABLE events_event;
CREATE TABLE events_event (
    id uuid NOT NULL,
    workspace_id bigint NOT NULL REFERENCES runs_workspace (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    occurred timestamptz NOT NULL,
    received timestamptz NOT NULL,
    name varchar(200) NOT NULL,
    resource jsonb NOT NULL,
    related jsonb NOT NULL,
    payload jsonb NOT NULL,
    PRIMARY KEY (id, occurred)
) PARTITION BY RANGE (occurred);
CREATE TABLE events_event_default PARTITION OF events_event DEFAULT;
CREATE INDEX event_ws_occurred ON events_event (workspace_id, occurred);
CREATE INDEX event_ws_name_occurred ON events_event (workspace_id, name, occurred);
CREATE INDEX event_received ON events_event (received);
"""

UNDO = """
DROP TABLE events_event;
CREATE TABLE events_event (
    id uuid NOT NULL PRIMARY KEY,
    workspace_id bigint NOT NULL,
    occurred timestamptz NOT NULL,
    received timestamptz NOT NULL,
    name varchar(200) NOT NULL,
    resource jsonb NOT NULL,
    related jsonb NOT NULL,
    payload jsonb NOT NULL
);
CREATE INDEX event_ws_occurred ON events_event (workspace_id, occurred);
CREATE INDEX event_ws_name_occurred ON events_event (workspace_id, name, occurred);
CREATE INDEX event_received ON events_event (received);
"""


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from events.partitions import create_partition

    with schema_editor.connection.cursor() as cursor:
        cursor.execute(DDL)
        today = timezone.now().date()
        for offset in range(-1, 8):
            create_partition(cursor, today + timedelta(days=offset))


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(UNDO)


class Migration(migrations.Migration):
    dependencies = [("events", "0001_initial")]

    operations = [migrations.RunPython(partition, unpartition, elidable=False)]
