"""Celery tasks: one-line wrappers that run a service through Towel."""

from celery import shared_task

from services import towel


@shared_task(name="services.run_service", ignore_result=True)
def run_service(name):
    return towel.run(name)


@shared_task(name="services.delete_in_background", ignore_result=True, acks_late=True)
def delete_in_background(job_id, holder):
    """Run a background deletion job (runs/deletion.py) while `holder` holds its lease."""
    from runs.deletion import run_job

    run_job(job_id, holder)
