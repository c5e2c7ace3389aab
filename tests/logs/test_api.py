"""The logs API: search by text, a run's download, paging, and bad input named by field."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Log, Role
from tests import factories
from tests.logs.conftest import write_lines

pytestmark = pytest.mark.django_db


def messages(answer):
    return [row["message"] for row in answer.json()["results"]]


def test_q_finds_lines_containing_the_text_ignoring_case_oldest_first(viewer, prefix, run):
    write_lines(run, ["Connecting to warehouse", "rows: 10", "WAREHOUSE timeout, retrying", "done"])
    answer = viewer.get(f"{prefix}/logs/", {"q": "warehouse"})
    assert answer.status_code == 200
    assert messages(answer) == ["Connecting to warehouse", "WAREHOUSE timeout, retrying"]


def test_q_combines_with_the_run_level_and_time_filters(viewer, prefix, ws, run):
    other = factories.flow_run(run.flow)
    write_lines(run, ["disk full"], level=40)
    write_lines(run, ["disk nearly full"], level=20)
    write_lines(other, ["disk full elsewhere"], level=40)
    answer = viewer.get(f"{prefix}/logs/", {"q": "disk", "flow_run": str(run.pk), "level": "ERROR"})
    assert messages(answer) == ["disk full"]


def test_q_treats_like_wildcards_as_plain_text(viewer, prefix, run):
    write_lines(run, ["100% done", "1000 done", "a_b", "axb"])
    assert messages(viewer.get(f"{prefix}/logs/", {"q": "100%"})) == ["100% done"]
    assert messages(viewer.get(f"{prefix}/logs/", {"q": "a_b", "flow_run": str(run.pk)})) == ["a_b"]


def test_q_never_shows_another_workspaces_lines(viewer, prefix, other_ws, run):
    foreign = factories.flow_run(factories.flow(other_ws))
    write_lines(foreign, ["secret warehouse"])
    write_lines(run, ["our warehouse"])
    assert messages(viewer.get(f"{prefix}/logs/", {"q": "warehouse"})) == ["our warehouse"]


@pytest.mark.parametrize("params, field", [
    ({"q": "ab"}, "q"),  # too short across runs
    ({"q": "x" * 201}, "q"),
    ({"q": "disk", "flow_run": "not-a-uuid"}, "flow_run"),
    ({"q": "disk", "level": "LOUD"}, "level"),
])
def test_bad_search_input_is_a_400_naming_the_field(viewer, prefix, params, field):
    answer = viewer.get(f"{prefix}/logs/", params)
    assert answer.status_code == 400, answer.content
    assert list(answer.json()["error"]["fields"]) == [field]


def test_a_short_q_is_taken_within_one_run(viewer, prefix, run):
    write_lines(run, ["ok", "no"])
    assert messages(viewer.get(f"{prefix}/logs/", {"q": "ok", "flow_run": str(run.pk)})) == ["ok"]


def test_search_pages_follow_the_keyset_and_each_line_comes_once(viewer, prefix, run):
    same = timezone.now() - timedelta(minutes=5)
    Log.objects.bulk_create([Log(workspace_id=run.workspace_id, flow_run=run, message=f"match {i}", timestamp=same)
                             for i in range(23)] + [Log(workspace_id=run.workspace_id, flow_run=run, message="other",
                                                        timestamp=same)])
    seen, page = [], viewer.get(f"{prefix}/logs/", {"q": "match", "page_size": 5}).json()
    pages = 1
    while True:
        seen += [row["message"] for row in page["results"]]
        if not page["next"]:
            break
        page = viewer.get(page["next"]).json()
        pages += 1
    assert sorted(seen) == sorted(f"match {i}" for i in range(23)) and len(seen) == 23
    assert pages == 5


def test_the_list_query_count_does_not_grow_with_lines(viewer, prefix, run, django_assert_max_num_queries):
    write_lines(run, [f"line {i}" for i in range(300)])
    with django_assert_max_num_queries(6):
        answer = viewer.get(f"{prefix}/logs/", {"q": "line", "page_size": 200})
    assert len(answer.json()["results"]) == 200


def test_download_as_text_has_every_line_in_time_order(viewer, prefix, run):
    task = factories.task_run(run)
    start = timezone.now() - timedelta(hours=2)
    write_lines(run, ["second"], start=start + timedelta(seconds=5))
    write_lines(run, ["first"], start=start, task_run=task)
    answer = viewer.get(f"{prefix}/logs/download/", {"flow_run": str(run.pk)})
    assert answer.status_code == 200 and answer.streaming
    assert answer["Content-Type"].startswith("text/plain")
    assert answer["Content-Disposition"] == f'attachment; filename="run-{run.pk}-logs.log"'
    lines = b"".join(answer.streaming_content).decode().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"INFO agent task={task.pk} first") and lines[1].endswith("INFO agent second")
    assert lines[0].startswith(start.strftime("%Y-%m-%dT%H:%M:%S"))


def test_download_as_ndjson_in_chunks_keeps_every_line_once(viewer, prefix, run, monkeypatch):
    from runs.logs import reading

    monkeypatch.setattr(reading, "EXPORT_CHUNK", 7)  # many keyset queries over ties
    same = timezone.now() - timedelta(minutes=1)
    Log.objects.bulk_create([Log(workspace_id=run.workspace_id, flow_run=run, message=f"m{i}", timestamp=same)
                             for i in range(30)])
    answer = viewer.get(f"{prefix}/logs/download/", {"flow_run": str(run.pk), "as": "ndjson"})
    assert answer["Content-Type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in b"".join(answer.streaming_content).decode().splitlines()]
    assert [row["message"] for row in rows] == [f"m{i}" for i in range(30)]
    assert rows[0]["flow_run"] == str(run.pk) and rows[0]["level_name"] == "INFO"


def test_download_takes_the_lists_filters(viewer, prefix, run):
    write_lines(run, ["keep this", "drop that", "keep that too"])
    answer = viewer.get(f"{prefix}/logs/download/", {"flow_run": str(run.pk), "q": "keep"})
    text = b"".join(answer.streaming_content).decode()
    assert "keep this" in text and "keep that too" in text and "drop" not in text


def test_download_reads_in_bounded_chunks(viewer, prefix, run, monkeypatch, django_assert_max_num_queries):
    """Memory: one chunk of rows at a time; 50 lines in chunks of 10 are 6 queries, not one of 50."""
    from runs.logs import reading

    monkeypatch.setattr(reading, "EXPORT_CHUNK", 10)
    write_lines(run, [f"l{i}" for i in range(50)])
    answer = viewer.get(f"{prefix}/logs/download/", {"flow_run": str(run.pk)})
    pieces = list(answer.streaming_content)
    assert len(pieces) == 5 and all(piece.count(b"\n") == 10 for piece in pieces)


@pytest.mark.parametrize("params, field", [
    ({}, "flow_run"),
    ({"flow_run": "nope"}, "flow_run"),
    ({"flow_run": "RUN", "as": "pdf"}, "as"),
    ({"flow_run": "RUN", "q": "x" * 201}, "q"),
])
def test_bad_download_input_is_a_400_naming_the_field(viewer, prefix, run, params, field):
    params = {k: (str(run.pk) if v == "RUN" else v) for k, v in params.items()}
    answer = viewer.get(f"{prefix}/logs/download/", params)
    assert answer.status_code == 400, answer.content
    assert list(answer.json()["error"]["fields"]) == [field]


def test_another_workspaces_run_cannot_be_downloaded(viewer, prefix, other_ws):
    foreign = factories.flow_run(factories.flow(other_ws))
    write_lines(foreign, ["theirs"])
    answer = viewer.get(f"{prefix}/logs/download/", {"flow_run": str(foreign.pk)})
    assert answer.status_code == 404


def test_download_needs_a_role_in_the_workspace(api, prefix, run, key_for, other_ws):
    write_lines(run, ["x"])
    outsider = api.as_key(key_for(Role.ADMIN, workspace=other_ws))
    assert outsider.get(f"{prefix}/logs/download/", {"flow_run": str(run.pk)}).status_code in (403, 404)
    agent = api.as_key(key_for(Role.AGENT))
    assert agent.get(f"{prefix}/logs/download/", {"flow_run": str(run.pk)}).status_code == 403
    api.credentials()
    assert api.get(f"{prefix}/logs/download/", {"flow_run": str(run.pk)}).status_code in (401, 403)
