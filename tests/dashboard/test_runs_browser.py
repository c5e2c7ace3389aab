"""The runs list in Debian's Chromium, as an operator uses it: find a failed run through the
filters, retry it and see the new attempt; tick 50 waiting runs and cancel them after a
confirmation that says how many; the confirmation page passes axe."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from runs.models import FlowRun, Role, State
from tests import factories

from .test_browser import axe_violations, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def operator_ws(live_browser_server):
    ws = factories.workspace(name="Production")
    factories.member(ws, role=Role.OPERATOR, username="ops")
    return ws


def test_find_a_failed_run_by_filters_retry_it_and_see_the_new_attempt(page, live_server, operator_ws, artifacts):
    now = timezone.now()
    etl, report = factories.flow(operator_ws, name="nightly-etl"), factories.flow(operator_ws, name="report")
    for hours in range(1, 6):
        factories.flow_run(etl, State.COMPLETED, scheduled_start=now - timedelta(hours=hours))
        factories.flow_run(report, State.FAILED, scheduled_start=now - timedelta(hours=hours))
    broken = factories.flow_run(etl, State.FAILED, name="etl-broken", scheduled_start=now - timedelta(hours=2),
                                state_message="warehouse connection refused", end_time=now - timedelta(hours=2))
    log_in(page, live_server)
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_label("State", exact=True).select_option(["FAILED"])
    page.get_by_label("Flow", exact=True).select_option(label="nightly-etl")
    page.get_by_role("button", name="Show").click()
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)
    assert "state=FAILED" in page.url and f"flow={etl.pk}" in page.url  # a link to share
    page.get_by_role("link", name="etl-broken").click()
    page.get_by_role("button", name="Retry…").click()
    expect(page.get_by_role("heading", name="Retry 1 run?")).to_be_visible()
    page.get_by_role("button", name="Yes, retry 1 run").click()
    expect(page.get_by_role("status")).to_contain_text("Retried 1 run.")
    expect(page.locator("#run-state")).to_have_text("SCHEDULED")
    expect(page.locator(".history")).to_contain_text("Retried by ops from the dashboard.")
    broken.refresh_from_db()
    assert broken.state == State.SCHEDULED and broken.end_time is None
    page.screenshot(path=str(artifacts / "run-retried.png"), full_page=True)


def test_bulk_cancel_50_runs_after_a_confirmation_that_says_how_many(page, live_server, operator_ws, artifacts):
    flow = factories.flow(operator_ws, name="backfill")
    now = timezone.now()
    FlowRun.objects.bulk_create([FlowRun(workspace=operator_ws, flow=flow, name=f"backfill-{i:02d}",
                                         scheduled_start=now + timedelta(minutes=i)) for i in range(50)])
    factories.flow_run(flow, State.RUNNING, name="keep-me", scheduled_start=now - timedelta(days=1))
    log_in(page, live_server)
    page.goto(f"{live_server.url}/dashboard/runs/?state=SCHEDULED")
    page.get_by_label("Tick every run on this page").check()
    expect(page.locator('input[name="run"]:checked')).to_have_count(50)
    page.get_by_role("button", name="Cancel…").click()
    expect(page.get_by_role("heading", name="Cancel 50 runs?")).to_be_visible()
    page.screenshot(path=str(artifacts / "runs-confirm-cancel.png"), full_page=True)
    assert axe_violations(page) == []
    assert FlowRun.objects.filter(state=State.SCHEDULED).count() == 50
    page.get_by_role("button", name="Yes, cancel 50 runs").click()
    expect(page.get_by_role("status")).to_contain_text("Cancelled 50 runs.")
    expect(page.get_by_text("No run matches these filters.")).to_be_visible()
    assert FlowRun.objects.filter(state=State.CANCELLED).count() == 50
    assert FlowRun.objects.get(name="keep-me").state == State.RUNNING
