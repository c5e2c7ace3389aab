from django.db import migrations

from services.migrations._periodic import periodic_task_adder, periodic_task_remover

SERVICES = [("scheduler", 10)]


class Migration(migrations.Migration):
    dependencies = [("django_celery_beat", "0019_alter_periodictasks_options")]

    operations = [migrations.RunPython(periodic_task_adder(SERVICES), periodic_task_remover(SERVICES))]
