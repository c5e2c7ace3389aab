"""The dashboard in Debian's Chromium: log in, pause and resume a schedule, read the timeline and a
run, check accessibility with the vendored axe-core, and save a screenshot of every page."""

import re
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from runs.models import FlowRun, Role, ScheduleStatus
from tests import factories

from .conftest import PASSWORD
from .demo_data import seed_window

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parents[2] / "static" / "vendor" / "axe-core" / "axe.min.js"


@pytest.fixture
def seeded(live_browser_server):
    ws = factories.workspace(name="Production")
    user = factories.member(ws, role=Role.ADMIN, username="ops")  # admin: every page, the forms too
    return {"ws": ws, "user": user, **seed_window(ws, timezone.now())}


def log_in(page, live_server, username="ops"):
    page.goto(f"{live_server.url}/dashboard/")
    expect(page).to_have_url(re.compile(r"/dashboard/login/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def axe_violations(page):
    """axe-core's WCAG 2 A/AA violations on the current page (labels, contrast, names, …)."""
    page.add_script_tag(path=str(AXE))
    return page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}}))
              .violations.map(v => ({id: v.id, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"""
    )


def test_log_in_and_every_page_renders_accessibly(page, live_server, seeded, artifacts):
    log_in(page, live_server)
    run = next(r for r in seeded["runs"] if r.state == "FAILED")
    task_run = run.task_runs.first()
    agent = seeded["ws"].agents.first()
    pages = {
        "overview": "/dashboard/", "timeline": "/dashboard/timeline/", "run-detail": f"/dashboard/runs/{run.pk}/",
        "schedules": "/dashboard/schedules/", "agents": "/dashboard/agents/", "recovery": "/dashboard/recovery/",
        "events": "/dashboard/events/", "runs": "/dashboard/runs/",
        "runs-failed": "/dashboard/runs/?state=FAILED", "flows": "/dashboard/flows/",
        "flow": f"/dashboard/flows/{run.flow_id}/", "agent": f"/dashboard/agents/{agent.pk}/",
        "task-run": f"/dashboard/task-runs/{task_run.pk}/", "schedule-new": "/dashboard/schedules/new/",
        "schedule-edit": f"/dashboard/schedules/{seeded['schedule'].pk}/edit/", "usage": "/dashboard/usage/",
        "automations": "/dashboard/automations/", "deliveries": "/dashboard/deliveries/", "audit": "/dashboard/audit/",
        "timeline-7d-by-queue": "/dashboard/timeline/?window=10080&group=queue",
    }
    problems = {}
    for name, path in pages.items():
        page.goto(live_server.url + path)
        expect(page.locator("h1")).to_be_visible()
        page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
        violations = axe_violations(page)
        if violations:
            problems[name] = violations
    assert problems == {}


def test_pause_from_the_dashboard_flips_the_toggle_and_deletes_future_runs_then_resume(
        page, live_server, seeded, artifacts):
    schedule = seeded["schedule"]
    future = FlowRun.objects.filter(schedule=schedule, state="SCHEDULED").count()
    assert future == 10
    log_in(page, live_server)
    page.get_by_role("link", name="Schedules").click()
    row = page.locator(f"#schedule-{schedule.pk}")
    toggle = row.get_by_role("switch")
    expect(toggle).to_have_attribute("aria-checked", "true")
    toggle.click()
    expect(row.locator(".to-delete")).to_have_text(str(future))
    page.screenshot(path=str(artifacts / "schedules-confirm-pause.png"), full_page=True)
    row.get_by_role("button", name=f"Pause {schedule.slug}").click()
    expect(row.get_by_role("switch")).to_have_attribute("aria-checked", "false")
    expect(row.get_by_role("switch")).to_contain_text("PAUSED")
    schedule.refresh_from_db()
    assert schedule.status == ScheduleStatus.PAUSED
    assert FlowRun.objects.filter(schedule=schedule, state="SCHEDULED").count() == 0
    row.get_by_role("switch").click()
    expect(row.get_by_role("switch")).to_have_attribute("aria-checked", "true")
    schedule.refresh_from_db()
    assert schedule.status == ScheduleStatus.ACTIVE
    assert FlowRun.objects.filter(schedule=schedule, state="SCHEDULED").count() == 10


def test_the_toggle_works_from_the_keyboard(page, live_server, seeded):
    schedule = seeded["schedule"]
    log_in(page, live_server)
    page.goto(f"{live_server.url}/dashboard/schedules/")
    toggle = page.locator(f"#schedule-{schedule.pk}").get_by_role("switch")
    for _ in range(40):
        page.keyboard.press("Tab")
        if toggle.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the schedule's toggle")
    page.keyboard.press("Space")
    keep = page.get_by_role("button", name="Keep active")
    expect(keep).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("button", name=f"Pause {schedule.slug}")).to_be_focused()
    page.keyboard.press("Enter")
    paused = page.locator(f"#schedule-{schedule.pk}").get_by_role("switch")
    expect(paused).to_have_attribute("aria-checked", "false")
    expect(paused).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(f"#schedule-{schedule.pk}").get_by_role("switch")).to_have_attribute("aria-checked", "true")
    schedule.refresh_from_db()
    assert schedule.status == ScheduleStatus.ACTIVE


def test_timeline_draws_one_bar_per_run_and_a_bar_opens_its_run_history(page, live_server, seeded, artifacts):
    log_in(page, live_server)
    page.get_by_role("link", name="Timeline").click()
    bars = page.locator(".timeline a.bar")
    expect(bars.first).to_be_visible()
    drawn = [b.get_attribute("href").rstrip("/").rsplit("/", 1)[-1] for b in bars.all()]
    seeded_ids = {str(r.pk) for r in seeded["runs"]}
    assert len(drawn) == len(set(drawn)), "a run drew two bars"
    assert seeded_ids <= set(drawn)
    # Beside the seeded runs, only the schedules' next runs due in the window's short future part.
    extra = FlowRun.objects.filter(pk__in=set(drawn) - seeded_ids)
    assert set(extra.values_list("state", flat=True)) <= {"SCHEDULED"} and extra.count() == len(drawn) - len(seeded_ids)
    expect(page.locator(".timeline .badge", has_text="CRASHED")).to_have_count(1)
    expect(page.locator(".timeline .bar.alarm")).to_have_count(4)  # 1 failed, 1 crashed, 2 late
    crashed = next(r for r in seeded["runs"] if r.state == "CRASHED")
    page.locator(f'.timeline a.bar[href$="/{crashed.pk}/"]').click()
    expect(page.get_by_role("heading", name=f"Run {crashed.name}")).to_be_visible()
    history = page.locator("ol.history li")
    expect(history).to_have_count(3)
    expect(history.last).to_contain_text("by Zombie Killer")
    expect(history.last).to_contain_text("CRASHED")
    page.screenshot(path=str(artifacts / "run-history.png"), full_page=True)
