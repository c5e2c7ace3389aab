"""Template filters of the dashboard's long lists."""

import functools

from django import template
from django.urls import reverse

register = template.Library()

_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


@functools.lru_cache(maxsize=1)
def _run_url_pattern():
    return reverse("dashboard:run", args=[_PLACEHOLDER])


@functools.lru_cache(maxsize=1)
def _task_run_url_pattern():
    return reverse("dashboard:task-run", args=[_PLACEHOLDER])


@register.filter
def run_url(pk):
    """A run's dashboard page, e.g. /dashboard/runs/<id>/: what {% url 'dashboard:run' pk %}
    gives, at a fraction of its cost in a list of hundreds of runs (one reverse per process)."""
    return _run_url_pattern().replace(_PLACEHOLDER, str(pk))


@register.filter
def task_run_url(pk):
    """A task run's dashboard page, as run_url: for a run's Gantt of up to 200 task runs."""
    return _task_run_url_pattern().replace(_PLACEHOLDER, str(pk))


@register.filter
def duration(seconds):
    """Seconds as a person reads them: 45 s, 3 min 20 s, 2 h 5 min."""
    from runs.dashboard.display import format_age

    return "—" if seconds is None else format_age(seconds)
