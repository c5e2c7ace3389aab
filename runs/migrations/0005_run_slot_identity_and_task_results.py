"""An auto-scheduled run's identity moves from its due time to its slot (issue #11, item 1).

Lazarus used to reschedule by moving `scheduled_start`, which was also the unique key: two stuck
runs of one schedule rescheduled in one pass collided. The slot is filled from `scheduled_start`
for the runs that exist (the best record of their fire time there is).
"""

import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0004_json_object_fields'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='flowrun',
            name='flowrun_auto_scheduled_unique',
        ),
        migrations.AddField(
            model_name='flowrun',
            name='slot',
            field=models.DateTimeField(blank=True, editable=False, help_text='The fire time of its schedule this run was made for (UTC); empty for manual runs.', null=True),
        ),
        migrations.RunSQL(
            "UPDATE runs_flowrun SET slot = scheduled_start WHERE auto_scheduled",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.AddField(
            model_name='taskrun',
            name='result',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='flowrun',
            name='scheduled_start',
            field=models.DateTimeField(default=django.utils.timezone.now, help_text='When the run is due: its slot, or later for a retry or a Lazarus reschedule.'),
        ),
        migrations.AddConstraint(
            model_name='flowrun',
            constraint=models.UniqueConstraint(condition=models.Q(('auto_scheduled', True)), fields=('flow', 'schedule_slug', 'slot'), name='flowrun_auto_scheduled_slot_unique'),
        ),
    ]
