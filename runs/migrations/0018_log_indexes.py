"""Fewer indexes on the logs table, the most written one: each costs every stored line.

The foreign keys' own indexes go (log_ws_time_id and log_run_time begin with workspace and flow run);
task runs' and the services' lines (the recovery review) get partial indexes, since most lines
are an agent's and name no task run. On a large table these statements hold writes for the time
an index takes to build; the log persister retries its batch afterwards (the stream keeps it).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0017_runs_list_index'),
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
    ]
