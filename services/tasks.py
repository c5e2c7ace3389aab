"""Celery tasks: one-line wrappers that run a service through Towel."""

from celery import shared_task

from services import towel


@shared_task(name="services.run_service", ignore_result=True)
def run_service(name):
    return towel.run(name)
