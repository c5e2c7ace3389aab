"""The dashboard's event feed and the live parts: filters in the URL, keyset pages, links, SSE wiring."""

import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Role, State
from tests import factories

from .helpers import event

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def shown(page):
    return [row["event"].name for row in page.context["rows"]]


def test_the_feed_lists_the_users_workspaces_events_newest_first(as_viewer, ws, other_ws):
    now = timezone.now()
    event(ws, "flow-run.state.running", occurred=now - timedelta(minutes=2))
    event(ws, "flow-run.state.crashed", occurred=now - timedelta(minutes=1))
    event(other_ws, "flow-run.state.failed", occurred=now)
    event(ws, "agent.online", kind="agent", occurred=now - timedelta(days=3))  # outside the default 24 h
    page = as_viewer.get("/dashboard/events/")
    assert page.status_code == 200
    assert shown(page) == ["flow-run.state.crashed", "flow-run.state.running"]
    html = page.content.decode()
    assert 'aria-current="page">Events' in html and "flow-run.state.crashed" in html
    # Live: one SSE connection for the page, the partial refreshing on its messages or every 15 s,
    # and a 30 s reload for browsers without JavaScript.
    assert 'hx-ext="sse" sse-connect="/dashboard/events/stream?last_event_id=' in html
    assert 'hx-trigger="sse:changed, every 15s"' in html
    assert '<noscript><meta http-equiv="refresh" content="30"></noscript>' in html
    assert "/static/vendor/htmx-ext-sse/sse.min.js" in html


def test_filters_come_from_the_url_and_go_into_the_stream(as_viewer, ws):
    now = timezone.now()
    event(ws, "flow-run.state.crashed", rid="a", occurred=now - timedelta(minutes=1))
    event(ws, "work-queue.unhealthy", kind="work-queue", rid="3", occurred=now - timedelta(minutes=2))
    event(ws, "flow-run.state.running", rid="b", occurred=now - timedelta(hours=3))
    assert shown(as_viewer.get("/dashboard/events/?name=flow-run.state")) == ["flow-run.state.crashed",
                                                                               "flow-run.state.running"]
    assert shown(as_viewer.get("/dashboard/events/?name=*.crashed")) == ["flow-run.state.crashed"]
    assert shown(as_viewer.get("/dashboard/events/?resource_kind=work-queue")) == ["work-queue.unhealthy"]
    assert shown(as_viewer.get("/dashboard/events/?resource_id=b")) == ["flow-run.state.running"]
    assert shown(as_viewer.get("/dashboard/events/?hours=1")) == ["flow-run.state.crashed", "work-queue.unhealthy"]
    page = as_viewer.get("/dashboard/events/?name=flow-run.state&resource_kind=flow-run&hours=6")
    html = page.content.decode()
    stream = re.search(r'sse-connect="([^"]+)"', html)[1].replace("&amp;", "&")
    assert "name=flow-run.state" in stream and "resource_kind=flow-run" in stream
    assert 'value="flow-run.state"' in html and '<option value="flow-run" selected>' in html
    assert '<option value="6" selected>' in html


def test_a_bad_filter_is_said_beside_the_form_not_a_500(as_viewer, ws):
    event(ws, "flow-run.state.crashed")
    page = as_viewer.get("/dashboard/events/?name=no%20spaces%20please")
    assert page.status_code == 200
    assert "name: Use an event name" in page.content.decode()
    assert shown(page) == ["flow-run.state.crashed"]  # unfiltered meanwhile
    page = as_viewer.get("/dashboard/events/?before=garbage")
    assert page.status_code == 200 and "before: Use a cursor" in page.content.decode()


def test_older_pages_walk_every_event_once_and_are_not_live(as_viewer, ws, monkeypatch):
    from runs.dashboard import events as feed

    monkeypatch.setattr(feed, "PAGE_ROWS", 4)
    moment = timezone.now() - timedelta(minutes=5)
    made = {str(event(ws, f"e.{i}", occurred=moment - timedelta(seconds=i // 3)).pk) for i in range(10)}
    seen, url, pages = [], "/dashboard/events/?name=e.", 0
    while url:
        page = as_viewer.get(url)
        seen += [str(row["event"].pk) for row in page.context["rows"]]
        pages += 1
        if pages > 1:
            assert page.context["stream_url"] is None and "sse-connect" not in page.content.decode()
            assert "Newest</a>" in page.content.decode()
        url = page.context["older"]
        if url:
            assert "name=e." in url and "before=" in url
    assert pages == 3 and len(seen) == 10 and set(seen) == made


def test_events_link_to_their_resources_pages(as_viewer, ws):
    run = factories.flow_run(factories.flow(ws), State.CRASHED)
    schedule = factories.schedule(factories.flow(ws))
    event(ws, "flow-run.state.crashed", rid=run.pk)
    event(ws, "task-run.state.failed", kind="task-run", rid=uuid.uuid4(), related=[("flow-run", run.pk)])
    event(ws, "work-queue.unhealthy", kind="work-queue", rid=3)
    event(ws, "schedule.paused", kind="schedule", rid=schedule.pk)
    event(ws, "flow-run.state.crashed", rid="not-a-uuid")  # e.g. from a webhook: no page, no link
    event(ws, "service.failed", kind="service", rid="lazarus")
    links = {(row["event"].name, row["event"].resource_id): row["link"]
             for row in as_viewer.get("/dashboard/events/").context["rows"]}
    assert links[("flow-run.state.crashed", str(run.pk))] == f"/dashboard/runs/{run.pk}/"
    assert next(v for (n, _), v in links.items() if n == "task-run.state.failed") == f"/dashboard/runs/{run.pk}/"
    assert links[("work-queue.unhealthy", "3")] == "/dashboard/agents/"
    assert links[("schedule.paused", str(schedule.pk))] == f"/dashboard/schedules/#schedule-{schedule.pk}"
    assert links[("flow-run.state.crashed", "not-a-uuid")] is None
    assert links[("service.failed", "lazarus")] is None
    assert f'href="/dashboard/runs/{run.pk}/"' in as_viewer.get("/dashboard/events/").content.decode()


def test_htmx_gets_only_the_live_partial(as_viewer, ws):
    event(ws, "flow-run.state.crashed")
    html = as_viewer.get("/dashboard/events/", **HTMX).content.decode()
    assert html.lstrip().startswith('<div id="events-live"') and "<html" not in html


def test_the_feed_needs_a_login(client):
    assert client.get("/dashboard/events/").status_code == 302


def test_the_feed_costs_the_same_queries_over_200_events(as_viewer, ws, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    event(ws, "flow-run.state.crashed")
    with CaptureQueriesContext(connection) as few:
        assert as_viewer.get("/dashboard/events/").status_code == 200
    now = timezone.now()
    for i in range(220):
        event(ws, f"flow-run.state.s{i}", rid=uuid.uuid4(), related=[("flow", i), ("flow-run", uuid.uuid4())],
              occurred=now - timedelta(seconds=i))
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = as_viewer.get("/dashboard/events/")
    assert len(page.context["rows"]) == 50 and page.context["older"]
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert as_viewer.get(page.context["older"]).status_code == 200


@pytest.mark.parametrize("url, names", [
    ("/dashboard/", ["flow-run.state", "agent.", "service.", "work-queue."]),
    ("/dashboard/timeline/", ["flow-run.state", "flow-run.rescheduled"]),
    ("/dashboard/agents/", ["agent.", "work-queue."]),
    ("/dashboard/recovery/", ["flow-run.state", "task-run.state", "flow-run.rescheduled"]),
])
def test_every_live_page_listens_to_the_stream_for_its_events(as_viewer, url, names):
    from urllib.parse import parse_qs, urlparse

    html = as_viewer.get(url).content.decode()
    assert 'hx-trigger="every 5s"' not in html
    # The agents page's part waits while a queue's limit is typed: sse:changed[!editingIn(…)].
    assert re.search(r'hx-trigger="sse:changed(\[[^"\]]*\])?, every 15s(\[[^"\]]*\])?"', html)
    assert '<noscript><meta http-equiv="refresh" content="30"></noscript>' in html
    query = parse_qs(urlparse(re.search(r'sse-connect="([^"]+)"', html)[1].replace("&amp;", "&")).query)
    assert query["name"] == names and query["last_event_id"][0].endswith("|00000000-0000-0000-0000-000000000000")


def test_the_run_page_listens_to_its_runs_events(as_viewer, ws):
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    html = as_viewer.get(f"/dashboard/runs/{run.pk}/").content.decode()
    assert f"about={run.pk}" in html and 'hx-trigger="sse:changed, every 15s"' in html


def test_pages_without_live_parts_do_not_reload_themselves(as_viewer):
    html = as_viewer.get("/dashboard/schedules/").content.decode()
    assert "http-equiv=\"refresh\"" not in html and "sse-connect" not in html


def test_viewers_of_one_workspace_see_none_of_anothers_events(client, ws, other_ws):
    event(other_ws, "flow-run.state.crashed")
    client.force_login(factories.member(ws, role=Role.VIEWER))
    assert client.get("/dashboard/events/").context["rows"] == []
