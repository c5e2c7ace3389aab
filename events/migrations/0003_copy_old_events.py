"""Events stored before the events app (runs_event) move into its table, each with a new id."""

import uuid

from django.db import migrations

BATCH = 5000


def copy(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO events_event (id, workspace_id, occurred, received, name, resource, related, "
                           "payload) SELECT gen_random_uuid(), workspace_id, occurred, occurred, name, resource, "
                           "related, payload FROM runs_event")
        return
    Old = apps.get_model("runs", "Event")
    New = apps.get_model("events", "Event")
    last = 0
    while True:
        rows = list(Old.objects.filter(pk__gt=last).order_by("pk")[:BATCH])
        if not rows:
            return
        New.objects.bulk_create([New(id=uuid.uuid4(), workspace_id=row.workspace_id, occurred=row.occurred,
                                     received=row.occurred, name=row.name, resource=row.resource,
                                     related=row.related, payload=row.payload) for row in rows])
        last = rows[-1].pk


class Migration(migrations.Migration):
    dependencies = [("events", "0002_partition_by_day"), ("runs", "0010_apikey_agent_role")]

    operations = [migrations.RunPython(copy, migrations.RunPython.noop)]
