"""The usage page in Debian's Chromium: an admin finds it from the nav, sees the month's count against
a reached quota, raises the quota, and the page says how many are left; accessibility checked by axe."""

import pytest
from playwright.sync_api import expect

from runs.models import Actor, Role, State
from runs.states import set_task_run_state
from tests import factories
from tests.dashboard.test_browser import axe_violations, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_sees_the_reached_quota_and_raises_it(page, live_browser_server, artifacts):
    ws = factories.workspace(name="Production", monthly_task_run_quota=3)
    factories.member(ws, role=Role.ADMIN, username="ops")
    run = factories.flow_run(factories.flow(ws, name="nightly-etl"), State.RUNNING)
    for _ in range(3):
        set_task_run_state(factories.task_run(run), State.COMPLETED, actor=Actor.AGENT)

    log_in(page, live_browser_server)
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage", level=1)).to_be_visible()
    card = page.locator("section.usage", has=page.get_by_role("heading", name="Production"))
    expect(card.locator(".usage-count")).to_have_text("3 of 3 task runs this month (100 %)")
    expect(card.get_by_role("meter")).to_have_attribute("aria-valuetext", "3 of 3")
    expect(card.get_by_role("status")).to_contain_text("QUOTA REACHED")
    page.screenshot(path=str(artifacts / "usage-reached.png"), full_page=True)
    assert axe_violations(page) == []

    card.get_by_label("Monthly quota").fill("5000")
    card.get_by_role("button", name="Save quota").click()
    expect(card.locator(".usage-count")).to_have_text("3 of 5,000 task runs this month (0 %)")
    expect(card).to_contain_text("4,997 left this month.")
    expect(card.get_by_role("status")).to_have_count(0)
    ws.refresh_from_db()
    assert ws.monthly_task_run_quota == 5000

    card.get_by_label("Monthly quota").fill("none please")
    card.get_by_role("button", name="Save quota").click()
    expect(card.get_by_role("alert")).to_contain_text("The quota must be a whole number")
    page.screenshot(path=str(artifacts / "usage-raised.png"), full_page=True)
    assert axe_violations(page) == []
