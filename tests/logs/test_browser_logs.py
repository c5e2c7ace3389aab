"""Log search on a run's dashboard page, in Debian's Chromium: type, see only matching lines (no
reload), page back through the matches, download them."""

import pytest
from playwright.sync_api import expect

from runs.models import Role, State
from tests import factories
from tests.dashboard.conftest import PASSWORD, artifacts, browser_context_args  # noqa: F401 - fixtures
from tests.dashboard.test_browser import axe_violations
from tests.logs.conftest import write_lines

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_searching_a_runs_logs_pages_and_downloads_the_matches(page, live_browser_server, artifacts, tmp_path):
    live_server = live_browser_server
    ws = factories.workspace(name="Production")
    factories.member(ws, role=Role.VIEWER, username="ops")
    run = factories.flow_run(factories.flow(ws, name="nightly-etl"), State.RUNNING, name="busy-run")
    # 330 lines; every third mentions the warehouse: 110 matches, more than one page of 100.
    write_lines(run, [f"step {i}: loaded warehouse partition {i}" if i % 3 == 0 else f"step {i}: transformed rows"
                      for i in range(330)])

    page.goto(f"{live_server.url}/dashboard/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{live_server.url}/dashboard/runs/{run.pk}/")
    lines = page.get_by_role("list", name="Log lines").get_by_role("listitem")
    expect(lines).to_have_count(100)
    expect(lines.last).to_contain_text("step 329: transformed rows")
    page.evaluate("window.notReloaded = true")

    page.get_by_label("Search").fill("WAREHOUSE partition")
    expect(page.locator("#logs-summary")).to_contain_text("Lines containing “WAREHOUSE partition”")
    expect(lines).to_have_count(100)
    expect(lines.first).to_contain_text("step 30: loaded warehouse partition 30")
    expect(lines.last).to_contain_text("step 327: loaded warehouse partition 327")
    assert page.evaluate("window.notReloaded === true"), "the search reloaded the page"
    expect(page.get_by_label("Search")).to_be_focused()  # the box keeps its focus while results change

    page.get_by_role("link", name="← Older").click()
    expect(lines).to_have_count(10)
    expect(lines.first).to_contain_text("step 0: loaded warehouse partition 0")
    expect(lines.last).to_contain_text("step 27: loaded warehouse partition 27")
    expect(page.get_by_role("link", name="Newer →")).to_be_visible()
    assert page.evaluate("window.notReloaded === true")
    page.screenshot(path=str(artifacts / "run-logs-search.png"), full_page=True)
    assert axe_violations(page) == []

    with page.expect_download() as download:
        page.get_by_role("link", name="text").click()
    saved = tmp_path / "logs.txt"
    download.value.save_as(saved)
    text = saved.read_text().splitlines()
    assert len(text) == 110 and all("warehouse partition" in line for line in text)
    assert text[0].endswith("step 0: loaded warehouse partition 0")

    page.get_by_label("Search").fill("no such text anywhere")
    expect(page.get_by_text("No line contains “no such text anywhere” at this level.")).to_be_visible()
