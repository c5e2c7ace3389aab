"""Log tests' fixtures: clients by role, runs with lines, and the events' private redis-server."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Log, Role, State
from tests import factories
from tests.events.conftest import private_redis  # noqa: F401 - a fixture, used by the ingestion tests


@pytest.fixture
def viewer(api, key_for):
    return api.as_key(key_for(Role.VIEWER))


@pytest.fixture
def run(ws):
    return factories.flow_run(factories.flow(ws), state=State.RUNNING)


def write_lines(run, messages, start=None, task_run=None, level=20):
    """Log rows for `run`, one second apart from `start` (default an hour ago), in order."""
    start = start or timezone.now() - timedelta(hours=1)
    return Log.objects.bulk_create([
        Log(workspace_id=run.workspace_id, flow_run=run, task_run=task_run, level=level, message=message,
            timestamp=start + timedelta(seconds=i)) for i, message in enumerate(messages)])
