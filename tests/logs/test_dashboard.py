"""A run's logs on its dashboard page: search, level, keyset pages, download, and who may see them."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import LogLevel, Role
from tests import factories
from tests.logs.conftest import write_lines

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_viewer(client, ws):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    return client


def shown(page):
    return [log.message for log in page.context["logs"]]


def test_the_run_page_shows_the_newest_lines_with_a_search_box_and_download_links(as_viewer, run):
    write_lines(run, [f"line {i}" for i in range(150)])
    page = as_viewer.get(f"/dashboard/runs/{run.pk}/")
    html = page.content.decode()
    assert shown(page) == [f"line {i}" for i in range(50, 150)]
    assert 'id="f-q"' in html and 'type="search"' in html
    assert f"/dashboard/runs/{run.pk}/logs/download?" in html and "as=ndjson" in html
    assert "← Older" in html and "Newer →" not in html


def test_search_shows_only_matching_lines(as_viewer, run):
    write_lines(run, ["load started", "warehouse connected", "load done", "Warehouse closed"])
    part = as_viewer.get(f"/dashboard/runs/{run.pk}/logs/", {"q": "WAREHOUSE"}, HTTP_HX_REQUEST="true")
    assert shown(part) == ["warehouse connected", "Warehouse closed"]
    assert "<html" not in part.content.decode()  # the partial alone


def test_search_and_level_combine(as_viewer, run):
    write_lines(run, ["disk low"], level=LogLevel.WARNING)
    write_lines(run, ["disk ok"], level=LogLevel.INFO)
    part = as_viewer.get(f"/dashboard/runs/{run.pk}/logs/", {"q": "disk", "level": LogLevel.WARNING})
    assert shown(part) == ["disk low"]


def test_pages_walk_back_and_forth_over_lines_with_one_timestamp(as_viewer, run):
    from runs.models import Log

    same = timezone.now() - timedelta(minutes=2)
    Log.objects.bulk_create([Log(workspace_id=run.workspace_id, flow_run=run, message=f"m{i:03}", timestamp=same)
                             for i in range(250)])
    url = f"/dashboard/runs/{run.pk}/logs/"
    page = as_viewer.get(url)
    seen = [shown(page)]
    while page.context["older_query"]:
        page = as_viewer.get(f"{url}?{page.context['older_query']}")
        seen.insert(0, shown(page))
    assert [m for chunk in seen for m in chunk] == [f"m{i:03}" for i in range(250)]
    assert [len(chunk) for chunk in seen] == [50, 100, 100]
    forward = []
    while True:
        forward += shown(page)
        if not page.context["newer_query"]:
            break
        page = as_viewer.get(f"{url}?{page.context['newer_query']}")
    assert forward == [f"m{i:03}" for i in range(250)]


def test_search_pages_keep_the_search(as_viewer, run):
    write_lines(run, [f"{'hit' if i % 2 else 'miss'} {i}" for i in range(300)])
    page = as_viewer.get(f"/dashboard/runs/{run.pk}/logs/", {"q": "hit"})
    assert "q=hit" in page.context["older_query"]
    older = as_viewer.get(f"/dashboard/runs/{run.pk}/logs/?{page.context['older_query']}")
    assert shown(older) == [f"hit {i}" for i in range(1, 100, 2)]


def test_a_bad_cursor_shows_the_newest_page(as_viewer, run):
    write_lines(run, ["only"])
    for cursor in ("nonsense", "1.2.3", "99999999999999999999999.1", "-5.x"):
        assert shown(as_viewer.get(f"/dashboard/runs/{run.pk}/logs/", {"before": cursor})) == ["only"]


def test_download_streams_the_runs_lines_with_the_pages_filters(as_viewer, run):
    write_lines(run, ["keep one", "drop", "keep two"])
    answer = as_viewer.get(f"/dashboard/runs/{run.pk}/logs/download", {"q": "keep", "as": "ndjson"})
    assert answer.status_code == 200 and answer.streaming
    body = b"".join(answer.streaming_content).decode()
    assert '"message": "keep one"' in body and '"message": "keep two"' in body and "drop" not in body


def test_another_workspaces_run_logs_are_404(client, other_ws, ws):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    foreign = factories.flow_run(factories.flow(other_ws))
    write_lines(foreign, ["theirs"])
    assert client.get(f"/dashboard/runs/{foreign.pk}/logs/").status_code == 404
    assert client.get(f"/dashboard/runs/{foreign.pk}/logs/download").status_code == 404


def test_logged_out_visitors_are_sent_to_the_login(client, run):
    answer = client.get(f"/dashboard/runs/{run.pk}/logs/download")
    assert answer.status_code == 302 and "/login" in answer["Location"]


def test_the_log_section_query_count_does_not_grow_with_lines(as_viewer, run, django_assert_max_num_queries):
    write_lines(run, [f"line {i}" for i in range(400)])
    with django_assert_max_num_queries(8):
        as_viewer.get(f"/dashboard/runs/{run.pk}/logs/", {"q": "line"})
