"""Keyset pages of runs and logs: every row exactly once, whatever the ties, at any depth."""

import base64
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import FlowRun, Log
from tests import factories


def walk(client, url, params, direction="next"):
    """Follow the links from the first page; returns the ids in the order seen and the pages."""
    seen, pages, page = [], 0, client.get(url, params).json()
    while True:
        seen += [row["id"] for row in page["results"]]
        pages += 1
        assert pages < 200, "the links never end"
        if not page[direction]:
            return seen, pages, page
        page = client.get(page[direction]).json()


def test_runs_that_share_one_created_time_each_come_exactly_once(viewer, prefix, ws):
    """A scheduler pass gives all its runs one `created`: DRF's cursor would repeat or skip them."""
    flow, same = factories.flow(ws), timezone.now()
    runs = FlowRun.objects.bulk_create([
        FlowRun(workspace=ws, flow=flow, scheduled_start=same + timedelta(minutes=i), created=same, name=f"r{i}")
        for i in range(1205)])
    seen, pages, _ = walk(viewer, f"{prefix}/flow_runs/", {"page_size": 100})
    assert sorted(seen) == sorted(str(run.pk) for run in runs)
    assert pages == 13


def test_walking_back_gives_the_same_pages_in_reverse(viewer, prefix, ws):
    flow, same = factories.flow(ws), timezone.now()
    FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, scheduled_start=same, created=same - timedelta(
        seconds=i // 3), name=f"r{i}") for i in range(25)])
    forward, _, last = walk(viewer, f"{prefix}/flow_runs/", {"page_size": 4, "ordering": "-scheduled_start"})
    back = [row["id"] for row in last["results"]]
    page = last
    while page["previous"]:
        page = viewer.get(page["previous"]).json()
        back = [row["id"] for row in page["results"]] + back
    assert back == forward and len(set(forward)) == 25


def test_a_run_added_meanwhile_does_not_shift_the_next_page(viewer, prefix, ws):
    flow = factories.flow(ws)
    runs = [factories.flow_run(flow, created=timezone.now() - timedelta(minutes=i)) for i in range(5)]
    first = viewer.get(f"{prefix}/flow_runs/", {"page_size": 2}).json()
    factories.flow_run(flow)
    second = viewer.get(first["next"]).json()
    assert [r["id"] for r in second["results"]] == [str(runs[2].pk), str(runs[3].pk)]


@pytest.mark.parametrize("cursor", ["nonsense", base64.urlsafe_b64encode(b'{"o":"-created"}').decode(),
                                    base64.urlsafe_b64encode(json.dumps(
                                        {"o": "-created", "v": "yesterday", "id": "x", "b": 0}).encode()).decode()])
def test_a_forged_cursor_is_400_naming_the_cursor(viewer, prefix, cursor):
    response = viewer.get(f"{prefix}/flow_runs/", {"cursor": cursor})
    assert response.status_code == 400 and "cursor" in response.json()["error"]["fields"]


def test_a_cursor_of_another_ordering_is_400(viewer, prefix, ws):
    flow = factories.flow(ws)
    for _ in range(3):
        factories.flow_run(flow)
    next_link = viewer.get(f"{prefix}/flow_runs/", {"page_size": 1}).json()["next"]
    response = viewer.get(next_link.replace("page_size=1", "page_size=1&ordering=scheduled_start"))
    assert response.status_code == 400 and "cursor" in response.json()["error"]["fields"]


def test_logs_with_one_timestamp_each_come_exactly_once(viewer, prefix, ws):
    run, now = factories.flow_run(factories.flow(ws)), timezone.now()
    Log.objects.bulk_create([Log(workspace=ws, flow_run=run, message=f"line {i}", timestamp=now) for i in range(130)])
    seen, pages, _ = walk(viewer, f"{prefix}/logs/", {"page_size": 50})
    assert len(seen) == len(set(seen)) == 130 and pages == 3


def test_a_deep_page_is_a_keyset_range_not_an_offset(viewer, prefix, ws):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    flow = factories.flow(ws)
    FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, scheduled_start=timezone.now(), name=f"r{i}")
                                 for i in range(60)])
    page = viewer.get(f"{prefix}/flow_runs/", {"page_size": 10}).json()
    for _ in range(4):
        page = viewer.get(page["next"]).json()
    with CaptureQueriesContext(connection) as captured:
        assert len(viewer.get(page["next"]).json()["results"]) == 10
    listing = [q["sql"] for q in captured.captured_queries if 'FROM "runs_flowrun"' in q["sql"]]
    assert len(captured.captured_queries) <= 3 and len(listing) == 1
    assert "OFFSET" not in listing[0].upper() and '"runs_flowrun"."created" <=' in listing[0]


def token(**fields):
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode()


RUN_ID = "0b3f7c9e-6d2a-4f4e-9a51-2f6f1f0c2b11"


@pytest.mark.parametrize("cursor", [
    token(o="-created", v=None, id=RUN_ID, b=0),
    token(o="-created", v="0001-01-01T00:00:00+01:00", id=RUN_ID, b=0),
    token(o="-created", v="9999-12-31T23:59:59-01:00", id=RUN_ID, b=0),
    token(o="-created", v="2026-01-01T00:00:00", id=RUN_ID, b=0),  # naive
    token(o="-created", v="2026-01-01T00:00:00Z", id=True, b=0),
    token(o="-created", v="2026-01-01T00:00:00Z", id="not-a-uuid", b=0),
    base64.urlsafe_b64encode(b"[" * 1000).decode(),
    "A" * 5000,
    base64.urlsafe_b64encode(b'["a", "list"]').decode(),
])
def test_crafted_run_cursors_are_400_never_500(viewer, prefix, cursor):
    response = viewer.get(f"{prefix}/flow_runs/", {"cursor": cursor})
    assert response.status_code == 400 and "cursor" in response.json()["error"]["fields"], response.content


def test_an_offset_postgresql_refuses_is_read_in_utc(viewer, prefix, ws):
    factories.flow_run(factories.flow(ws))
    cursor = token(o="-created", v="2030-01-01T00:00:00+20:00", id=RUN_ID, b=0)
    assert viewer.get(f"{prefix}/flow_runs/", {"cursor": cursor}).status_code == 200


@pytest.mark.parametrize("raw_id", ["Infinity", "1" * 400, "-1e400"])
def test_crafted_log_cursors_are_400_never_500(viewer, prefix, raw_id):
    cursor = base64.urlsafe_b64encode(
        f'{{"o":"timestamp","v":"2026-01-01T00:00:00Z","id":{raw_id},"b":0}}'.encode()).decode()
    response = viewer.get(f"{prefix}/logs/", {"cursor": cursor})
    assert response.status_code == 400 and "cursor" in response.json()["error"]["fields"], response.content


def test_a_page_emptied_meanwhile_leads_back_to_the_first_page(viewer, prefix, ws):
    flow = factories.flow(ws)
    runs = [factories.flow_run(flow, created=timezone.now() - timedelta(minutes=i)) for i in range(6)]
    second = viewer.get(viewer.get(f"{prefix}/flow_runs/", {"page_size": 2}).json()["next"]).json()
    FlowRun.objects.filter(pk__in=[runs[0].pk, runs[1].pk]).update(deleted_at=timezone.now())
    emptied = viewer.get(second["previous"]).json()
    assert emptied["results"] == [] and emptied["previous"] is None
    assert "cursor" not in emptied["next"]
    assert [r["id"] for r in viewer.get(emptied["next"]).json()["results"]] == [str(runs[2].pk), str(runs[3].pk)]
    FlowRun.objects.filter(pk__in=[r.pk for r in runs[4:]]).update(deleted_at=timezone.now())
    beyond = viewer.get(viewer.get(second["next"]).json()["next"] or second["next"]).json()
    assert beyond["results"] == [] and "cursor" not in beyond["previous"]
