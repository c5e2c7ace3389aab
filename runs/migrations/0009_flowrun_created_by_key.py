"""Manual runs made with a service API key record the key as their creator (issue #12, item 6).

Numbered 0008: 0006 and 0007 are added in parallel; the dependency is settled when they merge.
Existing runs keep no key (which key made them was never recorded).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0008_audit_trail'),
    ]

    operations = [
        migrations.AddField(
            model_name='flowrun',
            name='created_by_key',
            field=models.ForeignKey(blank=True, help_text="The API key a manual run was made with (also a person's own key); empty otherwise.", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='created_flow_runs', to='runs.apikey'),
        ),
    ]
