"""Issue 13's journey in Debian's Chromium: an admin points the "notify" default at their webhook
and turns it on in the dashboard; a run's heartbeats stop and the Zombie Killer crashes it; the
crash appears in the open event feed without a reload, and the automation's signed webhook reaches
the receiver, as the delivery log then says."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from automations import deliveries
from automations.models import Automation, Delivery
from events import persister
from runs.models import Role, State
from services import zombie_killer
from tests import factories
from tests.automations.conftest import Receiver
from tests.dashboard.conftest import artifacts, browser_context_args  # noqa: F401 - fixtures
from tests.feed.test_browser_feed import log_in, stream_open

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIGNING_VALUE = "whsec-browser-journey"


@pytest.fixture
def short_streams(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_STREAM_POLL_SECONDS": 0.2,
                             "EVENTS_STREAM_MAX_SECONDS": 4, "EVENTS_STREAM_HEARTBEAT_SECONDS": 1}


@pytest.fixture
def receiver():
    server = Receiver(secret=SIGNING_VALUE)
    yield server
    server.close()


def test_a_crashed_run_shows_in_the_feed_and_the_automations_webhook_fires(page, live_browser_server, short_streams,
                                                                          receiver, artifacts):
    live_server = live_browser_server
    ws = factories.workspace(name="Production")
    factories.member(ws, role=Role.ADMIN, username="ops")
    factories.secret(ws, name="HOOK_SIGNING", value=SIGNING_VALUE)
    started = timezone.now() - timedelta(hours=1)
    run = factories.flow_run(factories.flow(ws, name="nightly-etl"), State.RUNNING, name="silent-run",
                             start_time=started, last_heartbeat=started, heartbeat_interval=30)
    notify = Automation.objects.get(workspace=ws, default_key="notify-failed-runs")
    assert notify.enabled is False  # no destination yet

    log_in(page, live_server)
    page.goto(f"{live_server.url}/dashboard/automations/{notify.pk}/")
    page.get_by_label("Actions").fill(json.dumps([{"type": "call-webhook", "url": receiver.url("/ok"),
                                                   "secret_name": "HOOK_SIGNING"}]))
    page.get_by_label("Enabled").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    notify.refresh_from_db()
    assert notify.enabled is True and notify.actions[0]["url"] == receiver.url("/ok")

    page.get_by_role("link", name="Events").click()
    expect(page.get_by_role("heading", name="Events")).to_be_visible()
    stream_open(page)
    page.evaluate("window.notReloaded = true")

    # The Zombie Killer's real pass: the run's heartbeat stopped an hour ago.
    assert zombie_killer.run_once(timezone.now())["flow_runs_crashed"] == 1
    persister.run_once()  # stores the crash; the automation reacts in the same transaction
    crashed = page.locator('tr.event[data-name="flow-run.state.crashed"]')
    expect(crashed).to_have_count(1, timeout=10_000)
    assert page.evaluate("window.notReloaded") is True

    assert deliveries.run_once(timezone.now())["delivered"] == 1
    [hook] = receiver.received("/ok")
    assert hook["verified"], hook["headers"]
    body = json.loads(hook["body"])
    assert body["resource"] == {"kind": "flow-run", "id": str(run.pk)}
    assert body["events"][0]["name"] == "flow-run.state.crashed"
    persister.run_once()  # the automation.fired event
    expect(page.locator('tr.event[data-name="automation.fired"]')).to_have_count(1, timeout=10_000)
    page.screenshot(path=str(artifacts / "crash-to-webhook-feed.png"), full_page=True)

    page.get_by_role("link", name="Deliveries").click()
    row = page.locator("tr", has_text=receiver.url("/ok").split("//")[1].split("/")[0])
    expect(row.first).to_contain_text("Delivered")
    assert Delivery.objects.get().status == "delivered"
