"""Helpers for the data migrations that first gave each service its PeriodicTask row.

Kept for the migrations that use them. The rows' intervals are no longer theirs to set:
services/beat.py applies each service's interval from the environment after every `migrate` and
on every beat start.

Files starting with an underscore are not migrations; Django's loader skips them.
"""

import json

TASK = "services.run_service"


def periodic_task_adder(services):
    """A RunPython forward function creating one PeriodicTask per (name, seconds) in `services`.

    Existing rows are left as they are, so an admin's disabled task survives.
    """

    def forward(apps, schema_editor):
        IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
        PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
        for name, seconds in services:
            interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period="seconds")
            PeriodicTask.objects.get_or_create(
                name=f"service: {name}",
                defaults={"task": TASK, "interval": interval, "args": json.dumps([name]), "enabled": True,
                          "description": f"Runs the {name} service through Towel."},
            )

    return forward


def periodic_task_remover(services):
    def backward(apps, schema_editor):
        PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
        PeriodicTask.objects.filter(name__in=[f"service: {name}" for name, _ in services]).delete()

    return backward
