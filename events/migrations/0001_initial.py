import uuid

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [("runs", "0010_apikey_agent_role")]

    operations = [
        migrations.CreateModel(
            name="Event",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("occurred", models.DateTimeField(default=django.utils.timezone.now,
                                                  help_text="When it happened, where it happened.")),
                ("received", models.DateTimeField(default=django.utils.timezone.now,
                                                  help_text="When the persister stored it.")),
                ("name", models.CharField(help_text="e.g. flow-run.state.crashed, work-queue.unhealthy",
                                          max_length=200)),
                ("resource", models.JSONField(default=dict, help_text='{"kind": "flow-run", "id": "…"}')),
                ("related", models.JSONField(blank=True, default=list, help_text='[{"kind": "flow", "id": "…"}, …]')),
                ("payload", models.JSONField(blank=True, default=dict)),
                ("workspace", models.ForeignKey(db_constraint=False, on_delete=models.deletion.DO_NOTHING,
                                                related_name="events", to="runs.workspace")),
            ],
            options={
                "db_table": "events_event",
                "ordering": ["-occurred"],
                "indexes": [
                    models.Index(fields=["workspace", "occurred"], name="event_ws_occurred"),
                    models.Index(fields=["workspace", "name", "occurred"], name="event_ws_name_occurred"),
                    models.Index(fields=["received"], name="event_received"),
                ],
            },
        ),
        migrations.CreateModel(
            name="PendingEvent",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("body", models.JSONField()),
                ("created", models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
    ]
