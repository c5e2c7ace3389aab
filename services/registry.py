"""Every background service, by name. Beat's PeriodicTask rows name services from here.

A service's interval has one source: its setting (`settings.ORCHESTRATOR[interval_setting]`, from
the environment variable `ORCHESTRATOR_<interval_setting>`), read live, so every reader (beat's
rows, Towel's health verdict) sees the same number. services/beat.py copies it into beat's rows.
"""

from dataclasses import dataclass
from typing import Callable

from django.conf import settings


@dataclass(frozen=True)
class Service:
    name: str
    run_once: Callable  # run_once(now) -> dict summary of what it touched
    interval_setting: str  # key of settings.ORCHESTRATOR holding the seconds between passes
    description: str

    @property
    def interval_seconds(self):
        """Seconds between passes, as the environment says now."""
        return int(settings.ORCHESTRATOR[self.interval_setting])

    @property
    def interval_variable(self):
        """The environment variable that sets the interval."""
        return f"ORCHESTRATOR_{self.interval_setting}"


_SERVICES = {}


def register(name, interval_setting, description=""):
    """Decorator for a service's `run_once(now)`; `interval_setting` names its ORCHESTRATOR setting."""
    if interval_setting not in settings.ORCHESTRATOR:
        raise ValueError(f"Service {name!r} needs interval_setting, a key of settings.ORCHESTRATOR")

    def wrap(run_once):
        _SERVICES[name] = Service(name, run_once, interval_setting, description)
        return run_once

    return wrap


def get(name):
    load_all()
    try:
        return _SERVICES[name]
    except KeyError:
        raise KeyError(f"No service named {name!r}; known: {', '.join(sorted(_SERVICES))}") from None


def all_services():
    load_all()
    return dict(sorted(_SERVICES.items()))


def load_all():
    """Import every service module so that its @register runs."""
    from services import scheduler  # noqa: F401
    from services import (  # noqa: F401
        agent_monitor, audit_retention, cancellation_cleanup, deletion_jobs, late_runs, lazarus, log_persister,
        pause_expirer, retention, work_queue_monitor, zombie_killer,
    )
    from events import partitions, persister  # noqa: F401
    from automations import proactive  # noqa: F401
    from automations import deliveries  # noqa: F401
