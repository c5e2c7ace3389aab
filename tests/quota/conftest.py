"""Fixtures of the quota's tests: a fixed clock, task runs ready to complete, and the dashboard's clients."""

from datetime import datetime, timezone as dt_timezone

import pytest

from runs.models import Role, State
from tests import factories
from tests.agent.conftest import log_persister_running, start_agent, workspace_url  # noqa: F401 - real agents against a live server
from tests.dashboard.conftest import (  # noqa: F401 - fixtures shared with the dashboard's tests
    artifacts, browser_context_args)

# The middle of a month, far from its ends (the month-boundary tests set their own times).
MID_DECEMBER = datetime(2026, 12, 14, 12, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def now():
    return MID_DECEMBER


@pytest.fixture
def flow(ws):
    return factories.flow(ws)


@pytest.fixture
def running_run(flow):
    """A RUNNING flow run of `ws`, whose task runs the tests complete."""
    return factories.flow_run(flow, State.RUNNING)


@pytest.fixture
def agent_client(api, key_for):
    return api.as_key(key_for(Role.AGENT))


@pytest.fixture
def postgres_only():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (concurrent transactions on row locks); CI runs it there")
