"""The automations pages in Debian's Chromium: the switch flips in place (htmx) and both pages pass
axe-core's WCAG 2 A/AA checks."""

import json

import pytest
from playwright.sync_api import expect

from automations.models import Automation
from runs.models import Role
from tests import factories
from tests.dashboard.conftest import artifacts  # noqa: F401  (fixture)
from tests.dashboard.test_browser import axe_violations, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def admin_user(live_browser_server):
    ws = factories.workspace(name="Production")
    factories.member(ws, role=Role.ADMIN, username="ops")
    return ws


def test_the_switch_flips_in_place_and_the_pages_are_accessible(page, live_server, admin_user, artifacts):  # noqa: F811
    failing = Automation.objects.get(workspace=admin_user, default_key="service-failing")
    log_in(page, live_server)
    page.get_by_role("link", name="Automations").click()
    expect(page.get_by_role("heading", name="Automations", exact=True)).to_be_visible()
    assert axe_violations(page) == []
    page.screenshot(path=str(artifacts / "automations.png"), full_page=True)
    row = page.locator(f"#automation-{failing.pk}")
    row.get_by_role("switch").click()
    expect(row.get_by_role("switch")).to_have_attribute("aria-checked", "false")
    expect(page).to_have_url(f"{live_server.url}/dashboard/automations/")  # swapped in place, no reload
    failing.refresh_from_db()
    assert failing.enabled is False
    page.get_by_role("link", name=failing.name).click()
    trigger = page.get_by_label("Trigger")
    trigger.fill(json.dumps({**failing.trigger, "within": -5}))
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#id_trigger-errors")).to_contain_text("trigger.within: must be at least 1")
    assert axe_violations(page) == []
    page.screenshot(path=str(artifacts / "automation-edit.png"), full_page=True)
