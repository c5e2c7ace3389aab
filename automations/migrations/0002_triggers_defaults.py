"""The default automations for the workspaces that existed before automations (new ones get them
when they are created). Idempotent by (workspace, default_key)."""

from django.db import migrations


def add_defaults(apps, schema_editor):
    from automations.defaults import create_defaults

    Automation = apps.get_model("automations", "Automation")
    Workspace = apps.get_model("runs", "Workspace")
    ids = list(Workspace.objects.using(schema_editor.connection.alias).values_list("id", flat=True))
    for start in range(0, len(ids), 500):
        create_defaults(ids[start:start + 500], automation_model=Automation)


class Migration(migrations.Migration):

    dependencies = [
        ("automations", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(add_defaults, migrations.RunPython.noop),
    ]
