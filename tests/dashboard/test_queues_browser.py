"""Queues in Debian's Chromium: an operator pauses a queue and sets its limit on the agents page;
the page passes axe; a refresh of the live part does not throw away a limit being typed."""

import pytest
from playwright.sync_api import expect

from runs.models import Role, WorkQueue
from tests import factories

from .test_browser import axe_violations, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_pause_a_queue_and_limit_it_from_the_agents_page(page, live_server, live_browser_server, artifacts):
    ws = factories.workspace(name="Production")
    factories.member(ws, role=Role.OPERATOR, username="ops")
    queue = factories.work_queue(ws, name="gpu")
    factories.agent(ws, name="box-1").queues.add(queue)
    log_in(page, live_server)
    page.get_by_role("link", name="Agents & queues").click()
    page.get_by_role("button", name="Pause queue gpu").click()
    expect(page.get_by_role("status")).to_contain_text("Paused queue gpu")
    expect(page.locator("#queues-h + table")).to_contain_text("PAUSED")
    assert WorkQueue.objects.get(pk=queue.pk).paused

    limit = page.get_by_label("Limit")
    limit.fill("3")
    page.evaluate("htmx.trigger('#agents-live', 'sse:changed')")  # a live refresh while typing
    page.wait_for_timeout(500)
    expect(page.get_by_label("Limit")).to_have_value("3")
    page.get_by_role("button", name="Set limit of queue gpu").click()
    expect(page.get_by_role("status")).to_contain_text("at most 3 runs")
    expect(page.locator("#queues-h + table")).to_contain_text("0 / 3")
    assert WorkQueue.objects.get(pk=queue.pk).concurrency_limit == 3
    assert axe_violations(page) == []
    page.screenshot(path=str(artifacts / "agents-queue-paused.png"), full_page=True)
    page.get_by_role("link", name="box-1").click()
    expect(page.get_by_role("heading", name="Agent box-1")).to_be_visible()
    assert axe_violations(page) == []
