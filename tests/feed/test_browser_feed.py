"""The event feed in Debian's Chromium: a run crashes while the feed is open, and its event appears
without a reload, carried by the server-sent-events stream."""

import re
import time

import pytest
from playwright.sync_api import expect

from events import persister, stream
from runs.models import Actor, Role, State
from runs.states import set_flow_run_state
from tests import factories

from tests.dashboard.test_browser import axe_violations

from .conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def short_streams(live_browser_server, settings, page):
    """Quick reads, and streams that end (and reconnect) within seconds. Afterwards the page is
    closed and its streams end at their next keep-alive: none outlives the test."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_STREAM_POLL_SECONDS": 0.2,
                             "EVENTS_STREAM_MAX_SECONDS": 4}
    yield
    page.close()
    deadline = time.monotonic() + 10
    while stream.open_streams() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stream.open_streams() == 0, "a stream outlived its page"


def log_in(page, live_server):
    page.goto(f"{live_server.url}/dashboard/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def stream_open(page):
    """Wait until the page's EventSource is open (readyState 1)."""
    page.wait_for_function(
        """() => { const el = document.querySelector('[sse-connect]');
                   const data = el && el['htmx-internal-data'];
                   return !!(data && data.sseEventSource && data.sseEventSource.readyState === 1); }""",
        timeout=10_000)


def test_a_crashed_run_appears_in_the_open_feed_without_a_reload(page, live_browser_server, short_streams, artifacts):
    live_server = live_browser_server
    ws = factories.workspace(name="Production")
    factories.member(ws, role=Role.OPERATOR, username="ops")
    run = factories.flow_run(factories.flow(ws, name="nightly-etl"), State.RUNNING, name="doomed-run")
    log_in(page, live_server)
    page.get_by_role("link", name="Events").click()
    expect(page.get_by_role("heading", name="Events")).to_be_visible()
    expect(page.locator("tr.event")).to_have_count(0)
    stream_open(page)
    page.evaluate("window.notReloaded = true")

    set_flow_run_state(run, State.CRASHED, actor=Actor.ZOMBIE_KILLER, message="no heartbeat for 30 min")
    persister.run_once()

    crashed = page.locator('tr.event[data-name="flow-run.state.crashed"]')
    expect(crashed).to_have_count(1, timeout=10_000)
    expect(crashed).to_contain_text("no heartbeat for 30 min")
    assert page.evaluate("window.notReloaded") is True
    # The swapped-in partial listens too: a second crash appears as well.
    second = factories.flow_run(run.flow, State.RUNNING, name="second-run")
    set_flow_run_state(second, State.CRASHED, actor=Actor.ZOMBIE_KILLER, message="also silent")
    persister.run_once()
    expect(crashed).to_have_count(2, timeout=10_000)
    expect(crashed.first).to_contain_text("also silent")  # newest first
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=str(artifacts / "event-feed-live.png"), full_page=True)
    assert axe_violations(page) == []
    crashed.last.get_by_role("link").click()
    expect(page).to_have_url(re.compile(rf"/dashboard/runs/{run.pk}/$"))
    expect(page.locator("#run-state")).to_have_text("CRASHED")


def test_the_run_page_shows_a_crash_without_a_reload(page, live_browser_server, short_streams):
    live_server = live_browser_server
    ws = factories.workspace()
    factories.member(ws, role=Role.OPERATOR, username="ops")
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    log_in(page, live_server)
    page.goto(f"{live_server.url}/dashboard/runs/{run.pk}/")
    expect(page.locator("#run-state")).to_have_text("RUNNING")
    stream_open(page)
    page.evaluate("window.notReloaded = true")
    set_flow_run_state(run, State.CRASHED, actor=Actor.ZOMBIE_KILLER)
    persister.run_once()
    expect(page.locator("#run-state")).to_have_text("CRASHED", timeout=10_000)
    assert page.evaluate("window.notReloaded") is True
