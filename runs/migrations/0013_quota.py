"""The monthly task-run quota (runs/quota.py): a workspace's limit, its usage counters, and the flag
that counts a task run's first COMPLETED once."""

import django.core.validators
import django.db.models.deletion
import runs.models.workspaces
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0012_workqueue_health'),
    ]

    operations = [
        migrations.AddField(
            model_name='taskrun',
            name='quota_counted',
            field=models.BooleanField(default=False, editable=False),
        ),
        # Existing workspaces get no quota (null); ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA is for new ones.
        migrations.AddField(
            model_name='workspace',
            name='monthly_task_run_quota',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='workspace',
            name='monthly_task_run_quota',
            field=models.PositiveIntegerField(blank=True, default=runs.models.workspaces.default_monthly_task_run_quota, help_text='Successful (COMPLETED) task runs a calendar month (UTC) may count before agents claim no new runs until the next month; empty: no quota.', null=True, validators=[django.core.validators.MinValueValidator(1)]),
        ),
        migrations.CreateModel(
            name='TaskRunUsage',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('month', models.DateField(help_text='The first day of the calendar month (UTC).')),
                ('shard', models.PositiveSmallIntegerField()),
                ('completed', models.PositiveIntegerField(default=0)),
                ('workspace', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='task_run_usage', to='runs.workspace')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('workspace', 'month', 'shard'), name='taskrunusage_unique')],
            },
        ),
    ]
