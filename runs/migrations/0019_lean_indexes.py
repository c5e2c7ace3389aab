"""Fewer indexes on the two most written tables: each costs every stored line and every state change.

Runs: a state change rewrites every index of its row (the state is in several), and 0018 added
seven for the dashboard; the foreign keys' own indexes go where a composite index begins with
their column (workspace, flow, schedule, agent), and the schedule slug keeps one index without
the LIKE one (the API's `schedule=` filter is an exact match).

Logs: the foreign keys' own indexes go (log_ws_time_id and log_run_time begin with workspace and flow run);
task runs' and the services' lines (the recovery review) get partial indexes, since most lines
are an agent's and name no task run. On a large table these statements hold writes for the time
an index takes to build; the log persister retries its batch afterwards (the stream keeps it).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0018_dashboard_budgets'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='log',
            name='log_workspace_source_time',
        ),
        migrations.AlterField(
            model_name='log',
            name='flow_run',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='logs', to='runs.flowrun'),
        ),
        migrations.AlterField(
            model_name='log',
            name='task_run',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='logs', to='runs.taskrun'),
        ),
        migrations.AlterField(
            model_name='log',
            name='workspace',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='logs', to='runs.workspace'),
        ),
        migrations.AddIndex(
            model_name='log',
            index=models.Index(condition=models.Q(('source', 'agent'), _negated=True), fields=['workspace', 'source', 'timestamp'], name='log_service_source_time'),
        ),
        migrations.AddIndex(
            model_name='log',
            index=models.Index(condition=models.Q(('task_run__isnull', False)), fields=['task_run'], name='log_task_run'),
        ),
        migrations.AlterField(
            model_name='flowrun',
            name='agent',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='flow_runs', to='runs.agent'),
        ),
        migrations.AlterField(
            model_name='flowrun',
            name='flow',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='runs', to='runs.flow'),
        ),
        migrations.AlterField(
            model_name='flowrun',
            name='schedule',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='runs', to='runs.schedule'),
        ),
        migrations.AlterField(
            model_name='flowrun',
            name='schedule_slug',
            field=models.SlugField(blank=True, db_index=False, max_length=100),
        ),
        migrations.AlterField(
            model_name='flowrun',
            name='workspace',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='flow_runs', to='runs.workspace'),
        ),
        migrations.AddIndex(
            model_name='flowrun',
            index=models.Index(fields=['schedule_slug'], name='flowrun_schedule_slug'),
        ),
    ]
