"""The Celery app. Beat (django-celery-beat's DatabaseScheduler) triggers every service."""

import logging
import os

import click
from celery import Celery, bootsteps
from celery.exceptions import ImproperlyConfigured
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


class ThreadedBeat(bootsteps.StartStopStep):
    """`celery worker --beat-thread`: beat runs in a thread of the worker, not a process of its own.

    For one machine (`make run`), where a separate beat process costs ~100 MiB for a loop that wakes
    once a second. Celery's own `worker --beat` forks a beat process, which saves nothing. This is
    the same `EmbeddedService` celery's worker Beat step creates, asked for a thread, with the
    project's scheduler (CELERY_BEAT_SCHEDULER, services.beat_scheduler.ServiceScheduler).
    Production keeps separate beat processes (README: two beats); the option is off by default.
    """

    label = "ThreadedBeat"
    conditional = True
    # Started after the pool and stopped before it: beat sends only to a worker that can take work.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker, beat_thread=False, **kwargs):
        self.enabled = bool(beat_thread)
        if self.enabled and kwargs.get("beat"):
            raise ImproperlyConfigured("--beat-thread and -B/--beat both start a beat: choose one")
        super().__init__(worker, **kwargs)

    def create(self, worker):
        from celery.beat import EmbeddedService

        # A forking pool (prefork) may fork a new child while beat's thread holds a lock (logging,
        # the database connection's): the child would inherit it held. Threads and solo never fork.
        pool = worker.pool_cls if isinstance(worker.pool_cls, str) else worker.pool_cls.__module__
        if not pool.endswith(("thread", "threads", "solo")):
            raise ImproperlyConfigured(f"--beat-thread needs --pool threads or solo, not {pool}")
        return EmbeddedService(worker.app, thread=True, schedule_filename=worker.schedule_filename,
                               scheduler_cls=worker.scheduler)


app.user_options["worker"].add(click.Option(
    ["--beat-thread"], is_flag=True, default=False,
    help="Run beat in a thread of this worker (one machine only: every worker started so is a beat)."))
app.steps["worker"].add(ThreadedBeat)
