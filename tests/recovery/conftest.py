"""Fixtures for the recovery services: a fixed `now`, and runs placed in time around it."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from runs.models import ScheduleStatus
from tests import factories


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def ago(now):
    """ago(seconds) -> the datetime that many seconds before `now`."""
    return lambda seconds: now - timedelta(seconds=seconds)


@pytest.fixture
def flow(ws):
    return factories.flow(ws)


@pytest.fixture
def paused_schedule_flow(ws):
    """(flow, paused schedule) of the same workspace."""
    f = factories.flow(ws)
    return f, factories.schedule(f, status=ScheduleStatus.PAUSED)


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (row locks, SKIP LOCKED, advisory locks, killing a session); CI runs it there")


def history(run, task_run=None):
    """[(from, to, actor, message)] of a run's (or one task run's) state changes, oldest first."""
    rows = run.history.filter(task_run=task_run) if task_run else run.history.filter(task_run__isnull=True)
    return list(rows.values_list("from_state", "to_state", "actor", "message"))
