"""Fixtures of the event feed's tests: the dashboard's logged-in clients, a clock, and an agent key."""

import pytest
from django.utils import timezone

from runs.models import Role
from tests.dashboard.conftest import (  # noqa: F401 - fixtures shared with the dashboard's tests
    PASSWORD, artifacts, as_operator, as_viewer, browser_context_args, operator, viewer)


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def agent_client(api, key_for):
    """A client with an agent-role key of `ws`."""
    return api.as_key(key_for(Role.AGENT))


def names(events):
    """The names of `events` (a queryset or list), in a list sorted for comparison."""
    return sorted(event.name for event in events)


@pytest.fixture
def postgres_only():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (row locks, SKIP LOCKED); CI runs it there")
