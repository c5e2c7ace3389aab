"""Towel: the layer every maintenance routine runs through."""

from django.utils import timezone

from services import registry


def run(name, now=None):
    """Run one pass of service `name` and return its summary."""
    service = registry.get(name)
    return service.run_once(now or timezone.now())
