"""Dashboard fixtures: logged-in clients per role, and Playwright on Debian's Chromium."""

from pathlib import Path

import pytest

from runs.models import Role
from tests import factories

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
PASSWORD = "pw-for-tests-123"


@pytest.fixture
def operator(ws):
    return factories.member(ws, role=Role.OPERATOR)


@pytest.fixture
def viewer(ws):
    return factories.member(ws, role=Role.VIEWER)


@pytest.fixture
def as_operator(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def as_viewer(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1360, "height": 900}}


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

