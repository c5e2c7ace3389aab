"""GET events/: the workspace's events, filtered, newest first in keyset pages; bad filters are 400s."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Role
from tests import factories

from .helpers import event

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer_api(api, key_for):
    return api.as_key(key_for(Role.VIEWER))


def names(answer):
    assert answer.status_code == 200, answer.content
    return [row["name"] for row in answer.json()["results"]]


@pytest.fixture
def mixed(ws, other_ws):
    now = timezone.now()
    made = [
        event(ws, "flow-run.state.crashed", rid="run-a", related=[("flow", 7), ("work-queue", 3)],
              occurred=now - timedelta(minutes=1)),
        event(ws, "flow-run.state.completed", rid="run-b", related=[("flow", 8)], occurred=now - timedelta(minutes=2)),
        event(ws, "task-run.state.failed", kind="task-run", rid="task-1", related=[("flow-run", "run-a")],
              occurred=now - timedelta(minutes=3)),
        event(ws, "work-queue.unhealthy", kind="work-queue", rid="3", occurred=now - timedelta(hours=2)),
        event(ws, "agent.online", kind="agent", rid="9", occurred=now - timedelta(days=2)),
    ]
    event(other_ws, "flow-run.state.crashed", rid="run-z", occurred=now)  # another tenant's
    return made


def test_lists_the_workspaces_events_newest_first(viewer_api, prefix, mixed):
    answer = viewer_api.get(f"{prefix}/events/")
    assert names(answer) == ["flow-run.state.crashed", "flow-run.state.completed", "task-run.state.failed",
                             "work-queue.unhealthy", "agent.online"]
    first = answer.json()["results"][0]
    assert set(first) == {"id", "occurred", "received", "name", "resource", "related", "payload"}
    assert first["resource"] == {"kind": "flow-run", "id": "run-a"}


@pytest.mark.parametrize("query, expected", [
    ("name=flow-run.state", ["flow-run.state.crashed", "flow-run.state.completed"]),
    ("name=*.crashed", ["flow-run.state.crashed"]),
    ("name=*.state.*", ["flow-run.state.crashed", "flow-run.state.completed", "task-run.state.failed"]),
    ("name=work-queue.*", ["work-queue.unhealthy"]),
    ("name=agent.online,work-queue.unhealthy", ["work-queue.unhealthy", "agent.online"]),
    ("name=agent.online&name=task-run.", ["task-run.state.failed", "agent.online"]),
    ("name=flow-run.state.c%3Fmpleted", ["flow-run.state.completed"]),
    ("resource_kind=task-run", ["task-run.state.failed"]),
    ("resource_id=run-b", ["flow-run.state.completed"]),
    ("related_id=run-a", ["task-run.state.failed"]),
    ("about=run-a", ["flow-run.state.crashed", "task-run.state.failed"]),
    ("related_id=3", ["flow-run.state.crashed"]),
    ("resource_kind=work-queue&resource_id=3", ["work-queue.unhealthy"]),
])
def test_filters(viewer_api, prefix, mixed, query, expected):
    assert names(viewer_api.get(f"{prefix}/events/?{query}")) == expected


def test_time_window(viewer_api, prefix, mixed):
    now = timezone.now()
    since = (now - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    until = (now - timedelta(minutes=90)).isoformat().replace("+00:00", "Z")
    assert names(viewer_api.get(f"{prefix}/events/", {"since": since, "until": until})) == ["work-queue.unhealthy"]


@pytest.mark.parametrize("query, field", [
    ("name=flow run", "name"),
    ("name=" + "x" * 201, "name"),
    ("name=" + ",".join(f"n{i}" for i in range(11)), "name"),
    ("resource_kind=Flow Run!", "resource_kind"),
    ("resource_id=" + "x" * 201, "resource_id"),
    ("related_id=" + "y" * 300, "related_id"),
    ("since=yesterday", "since"),
    ("until=2026-13-45", "until"),
    ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
    ("cursor=bm9wZQ", "cursor"),
])
def test_bad_filters_are_a_400_naming_the_field(viewer_api, prefix, mixed, query, field):
    answer = viewer_api.get(f"{prefix}/events/?{query}")
    assert answer.status_code == 400, answer.content
    assert field in answer.json()["error"]["fields"]


def test_keyset_pages_walk_every_event_once_even_when_many_share_a_moment(viewer_api, prefix, ws):
    moment = timezone.now()
    made = {str(event(ws, f"e.{i}", occurred=moment - timedelta(seconds=i // 10)).pk) for i in range(45)}
    seen, url = [], f"{prefix}/events/?page_size=10"
    while url:
        page = viewer_api.get(url).json()
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    assert len(seen) == 45 and set(seen) == made


def test_another_workspace_is_a_404_and_agents_may_not_read(api, key_for, prefix, other_ws):
    from tests.conftest import api_prefix

    viewer = api.as_key(key_for(Role.VIEWER))
    assert viewer.get(f"{api_prefix(other_ws)}/events/").status_code == 404
    assert api.as_key(key_for(Role.AGENT)).get(f"{prefix}/events/").status_code == 403


def test_a_session_reads_too(client, ws, prefix, mixed):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    assert client.get(f"{prefix}/events/?name=agent.").json()["results"][0]["name"] == "agent.online"


def test_the_list_costs_the_same_queries_over_200_events(viewer_api, prefix, ws, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    event(ws)
    viewer_api.get(f"{prefix}/events/?page_size=200")  # the key's last-used write happens once a minute
    with CaptureQueriesContext(connection) as few:
        assert len(viewer_api.get(f"{prefix}/events/?page_size=200").json()["results"]) == 1
    for i in range(220):
        event(ws, f"e.{i}", related=[("flow", i)])
    with django_assert_max_num_queries(len(few.captured_queries)):
        answer = viewer_api.get(f"{prefix}/events/?page_size=200&about=x&name=e.")
    with django_assert_max_num_queries(len(few.captured_queries)):
        answer = viewer_api.get(f"{prefix}/events/?page_size=200")
    assert len(answer.json()["results"]) == 200 and answer.json()["next"]
