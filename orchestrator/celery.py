"""The Celery app. Beat (django-celery-beat's DatabaseScheduler) triggers every service."""

import logging
import os

from celery import Celery
from celery.signals import after_setup_logger

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

app = Celery("orchestrator")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["services"])


@after_setup_logger.connect
def _quiet_routine_lines(logger=None, **kwargs):
    """Beat sends a service every second (the event persister) and the worker would log each one
    received and finished: three lines a second that hide everything else. A failed pass is
    still logged by Towel (services/towel.py), and beat's start-up lines stay."""
    for name in ("celery.beat", "celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
