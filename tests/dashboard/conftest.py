"""Dashboard fixtures: logged-in clients per role, and Playwright on Debian's Chromium."""

import os
from pathlib import Path

import pytest

from runs.models import Role
from tests import factories

CHROMIUM = "/usr/bin/chromium"
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


def pytest_collection_modifyitems(config, items):
    """Browser tests need Debian's Chromium; CI (ORCHESTRATOR_REQUIRE_BROWSER=1) must not skip them."""
    if Path(CHROMIUM).exists() or os.environ.get("ORCHESTRATOR_REQUIRE_BROWSER") == "1":
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def live_dashboard(live_server):
    """The live server, its request threads closing their database connection after each request.

    Chromium keeps its sockets alive between requests, so a request thread (and the connection
    it opened with CONN_MAX_AGE) could outlive the tests and keep PostgreSQL from dropping the
    test database. Not restored afterwards: the browser may still poll while the test tears down,
    and only the live server's threads read the setting (the test Client never closes).
    """
    from django.db import connections

    connections.settings["default"]["CONN_MAX_AGE"] = 0
    return live_server


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"ORCHESTRATOR_REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install -y chromium")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1360, "height": 900}}


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

