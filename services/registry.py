"""Every background service, by name. Beat's PeriodicTask rows name services from here."""

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Service:
    name: str
    run_once: Callable  # run_once(now) -> dict summary of what it touched
    interval_seconds: int  # the default loop; admins change the PeriodicTask to change it
    description: str


_SERVICES = {}


def register(name, interval_seconds, description):
    """Decorator for a service's `run_once(now)`."""

    def wrap(run_once):
        _SERVICES[name] = Service(name, run_once, interval_seconds, description)
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
        agent_monitor, cancellation_cleanup, late_runs, lazarus, pause_expirer, zombie_killer,
    )
