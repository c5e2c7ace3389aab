"""The beat scheduler: django-celery-beat's, applying the services' intervals first (services/beat.py).

A module of its own so that web processes, which import services/beat.py (admin, health), do not
load celery's beat machinery.
"""

import logging

from django.db import DatabaseError
from django_celery_beat.schedulers import DatabaseScheduler

from services import registry
from services.beat import apply_service_intervals

logger = logging.getLogger(__name__)


class ServiceScheduler(DatabaseScheduler):
    """django-celery-beat's DatabaseScheduler that first applies the services' intervals from settings.

    Done before the first read of the schedule, so this beat starts with the environment's
    intervals (celery's `beat_init` signal comes after that read).
    """

    def setup_schedule(self):
        try:
            changed = apply_service_intervals()
        except DatabaseError:
            # Degrade, don't fail: beat schedules the rows as they are and says why.
            logger.exception("Could not apply the services' intervals from the environment; "
                             "scheduling the PeriodicTask rows as they are.")
        else:
            logger.info("Service intervals from the environment: %s%s",
                        ", ".join(f"{name} {s.interval_seconds} s" for name, s in registry.all_services().items()),
                        f" (changed: {', '.join(changed)})" if changed else "")
        super().setup_schedule()
