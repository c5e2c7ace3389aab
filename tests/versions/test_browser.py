"""The flow page in Debian's Chromium: compare two versions, pin a schedule through the htmx menu,
and axe-core's WCAG 2 A/AA check of the flows list, the flow page and the comparison."""

import re

import pytest
from playwright.sync_api import expect

from runs.models import AuditEntry, Role, Schedule
from tests import factories
from tests.dashboard.conftest import PASSWORD
from tests.dashboard.test_browser import axe_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def seeded(live_browser_server):
    ws = factories.workspace(name="Production")
    factories.member(ws, role=Role.OPERATOR, username="ops")
    flow = factories.flow(ws, name="nightly-etl", entrypoint="etl.flows:nightly")
    flow.register_version(entrypoint="etl.flows:nightly", version="2", parameters={"day": "yesterday"},
                          job_env={"TZ": "UTC", "DEBUG": "1"})
    flow.register_version(entrypoint="etl.nightly:run", version="3", parameters={"day": 1, "full": False},
                          job_env={"TZ": "Europe/Berlin"}, secrets=["DB_PASSWORD"])
    schedule = factories.schedule(flow, slug="nightly")
    return {"flow": flow, "schedule": schedule, "versions": {v.version: v for v in flow.versions.all()}}


def log_in(page, live_server):
    page.goto(f"{live_server.url}/dashboard/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_compare_two_versions_and_pin_a_schedule_from_the_flow_page(page, live_server, seeded, artifacts):
    flow, schedule, v = seeded["flow"], seeded["schedule"], seeded["versions"]
    log_in(page, live_server)
    page.get_by_role("link", name="Flows").click()
    assert axe_violations(page) == []
    page.get_by_role("link", name="nightly-etl").click()
    expect(page.get_by_role("heading", name="Flow nightly-etl")).to_be_visible()
    page.screenshot(path=str(artifacts / "flow.png"), full_page=True)
    assert axe_violations(page) == []

    # Compare the oldest with the newest: pick them in the radio columns.
    page.get_by_label("Compare from 1").check()
    page.get_by_label("Compare to 3").check()
    page.get_by_role("button", name="Compare the two chosen versions").click()
    expect(page).to_have_url(re.compile(r"/compare/\?"))
    assert f"base={v['1'].pk}" in page.url and f"head={v['3'].pk}" in page.url
    parameters = page.locator("section", has=page.get_by_role("heading", name="Default parameters"))
    expect(parameters.get_by_role("row", name=re.compile("Added full"))).to_contain_text("(boolean)")
    expect(page.locator("section", has=page.get_by_role("heading", name="Entrypoint"))).to_contain_text("Changed")
    page.screenshot(path=str(artifacts / "flow-compare.png"), full_page=True)
    assert axe_violations(page) == []

    # Pin the schedule to version 2 through the menu; the row answers in place (htmx).
    page.get_by_role("link", name="← Flow nightly-etl").click()
    row = page.locator(f"#flow-schedule-{schedule.pk}")
    expect(row).to_contain_text("Follows the latest")
    row.get_by_label("Version nightly runs").select_option(str(v["2"].pk))
    row.get_by_role("button", name="Save the version of nightly").click()
    expect(page.locator(f"#flow-schedule-{schedule.pk}")).to_contain_text("Pinned to 2")
    expect(page.get_by_label("Version nightly runs")).to_be_focused()
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id == v["2"].pk
    assert AuditEntry.objects.filter(target_id=str(schedule.pk), action="schedule.pin", via="dashboard").exists()
    assert page.url.endswith(f"/dashboard/flows/{flow.pk}/")  # no full reload: still the flow page
