"""Creating a calendar schedule in Debian's Chromium: the controls of the chosen kind appear, the
preview of the next fire times follows what is typed, a mistake shows in the preview naming the
field, and the saved schedule has its runs; the form passes axe."""

import pytest
from playwright.sync_api import expect

from runs.models import FlowRun, Role, Schedule
from tests import factories

from .test_browser import axe_violations, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_create_a_calendar_schedule_with_a_live_preview(page, live_server, live_browser_server, artifacts):
    ws = factories.workspace(name="Finance")
    factories.member(ws, role=Role.ADMIN, username="ops")
    flow = factories.flow(ws, name="close-books")
    log_in(page, live_server)
    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("link", name="New schedule").click()
    page.get_by_label("Flow", exact=True).select_option(label=f"close-books ({ws.slug})")
    page.get_by_label("Slug", exact=True).fill("month-end")
    page.get_by_label("Kind", exact=True).select_option("calendar")
    expect(page.get_by_label("Days", exact=True)).to_be_visible()
    expect(page.get_by_label("Cron", exact=True)).to_be_hidden()
    page.get_by_label("Time zone").fill("Europe/London")
    page.get_by_label("Days", exact=True).select_option("last_business_day_of_month")
    page.get_by_label("At (local times)").fill("17:30")
    preview = page.locator("#preview")
    expect(preview.locator("tbody tr")).to_have_count(10)
    expect(preview.locator("tbody tr").first).to_contain_text("17:30")
    assert axe_violations(page) == []

    page.get_by_label("At (local times)").fill("25:99")
    expect(preview.get_by_role("alert")).to_contain_text("calendar")
    page.get_by_label("At (local times)").fill("17:30")
    expect(preview.locator("tbody tr")).to_have_count(10)
    page.screenshot(path=str(artifacts / "schedule-new-calendar.png"), full_page=True)

    page.get_by_role("button", name="Create schedule").click()
    expect(page.get_by_role("heading", name="Schedules")).to_be_visible()
    schedule = Schedule.objects.get(flow=flow, slug="month-end")
    assert schedule.calendar["base"] == {"rule": "last_business_day_of_month"}
    assert FlowRun.objects.filter(schedule=schedule).count() == 10
    expect(page.locator(f"#schedule-{schedule.pk}")).to_contain_text("month-end")
