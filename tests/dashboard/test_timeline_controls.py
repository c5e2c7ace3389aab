"""The timeline's windows from 15 minutes, zoom and pan by URL, grouping by flow or queue, and
the duration scatter."""

from datetime import timedelta
from urllib.parse import parse_qs

import pytest
from django.utils import timezone

from runs.models import State
from tests import factories

pytestmark = pytest.mark.django_db


def test_a_15_minute_window_shows_only_its_runs(as_operator, ws):
    flow = factories.flow(ws)
    now = timezone.now()
    factories.flow_run(flow, State.COMPLETED, name="inside", scheduled_start=now - timedelta(minutes=10),
                       start_time=now - timedelta(minutes=10), end_time=now - timedelta(minutes=8))
    factories.flow_run(flow, State.COMPLETED, name="before", scheduled_start=now - timedelta(minutes=50),
                       start_time=now - timedelta(minutes=50), end_time=now - timedelta(minutes=45))
    page = as_operator.get("/dashboard/timeline/?window=15")
    assert [bar["run"].name for bar in page.context["bars"]] == ["inside"]
    assert page.context["end"] - page.context["start"] == timedelta(minutes=15)


def test_zoom_and_pan_links_move_the_window_and_keep_the_filters(as_operator, ws):
    flow = factories.flow(ws)
    page = as_operator.get(f"/dashboard/timeline/?window=60&flow={flow.pk}")
    start, end, links = page.context["start"], page.context["end"], page.context["links"]
    centre = start + (end - start) / 2

    def window_of(query):
        answer = as_operator.get(f"/dashboard/timeline/?{query}")
        assert parse_qs(query)["flow"] == [str(flow.pk)]
        return answer.context["start"], answer.context["end"], answer.context["pinned"]

    zin_start, zin_end, pinned = window_of(links["zoom_in"])
    assert pinned and zin_end - zin_start == timedelta(minutes=15)
    assert abs((zin_start + (zin_end - zin_start) / 2 - centre).total_seconds()) < 1
    zout_start, zout_end, _ = window_of(links["zoom_out"])
    assert zout_end - zout_start == timedelta(hours=6)
    earlier_start, earlier_end, _ = window_of(links["earlier"])
    assert abs((earlier_end - (end - timedelta(minutes=30))).total_seconds()) < 1
    later_start, _, _ = window_of(links["later"])
    assert abs((later_start - (start + timedelta(minutes=30))).total_seconds()) < 1
    # The smallest window has no zoom in, the largest no zoom out.
    assert "zoom_in" not in as_operator.get("/dashboard/timeline/?window=15").context["links"]
    assert "zoom_out" not in as_operator.get("/dashboard/timeline/?window=10080").context["links"]


def test_a_panned_window_shows_runs_of_that_time(as_operator, ws):
    flow = factories.flow(ws)
    now = timezone.now()
    at = now - timedelta(days=2)
    factories.flow_run(flow, State.COMPLETED, name="two-days-ago", scheduled_start=at, start_time=at,
                       end_time=at + timedelta(minutes=5))
    end = (at + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    page = as_operator.get(f"/dashboard/timeline/?window=60&end={end}")
    assert [bar["run"].name for bar in page.context["bars"]] == ["two-days-ago"]
    assert page.context["now_left"] is None  # now is not in this window: no now line
    assert "Back to now" in page.content.decode()
    assert as_operator.get("/dashboard/timeline/?end=garbage").status_code == 200  # falls back to now


def test_group_by_flow_or_queue_puts_a_heading_where_each_group_starts(as_operator, ws):
    now = timezone.now()
    alpha, beta = factories.flow(ws, name="alpha"), factories.flow(ws, name="beta")
    gpu = factories.work_queue(ws, name="gpu")
    for minutes, flow in ((50, beta), (40, alpha), (30, beta), (20, alpha)):
        factories.flow_run(flow, State.RUNNING, name=f"{flow.name}-{minutes}", start_time=now - timedelta(minutes=minutes),
                           scheduled_start=now - timedelta(minutes=minutes), work_queue=gpu if flow is beta else None)
    rows = as_operator.get("/dashboard/timeline/?window=60&group=flow").context["rows"]
    assert [(heading, bar["run"].name) for heading, bar in rows] == [
        ("alpha", "alpha-40"), (None, "alpha-20"), ("beta", "beta-50"), (None, "beta-30")]
    rows = as_operator.get("/dashboard/timeline/?window=60&group=queue").context["rows"]
    assert [heading for heading, _ in rows if heading] == ["(no queue)", "gpu"]


def test_the_scatter_plots_finished_runs_by_start_and_duration(as_operator, ws):
    flow = factories.flow(ws)
    now = timezone.now()
    quick = factories.flow_run(flow, State.COMPLETED, start_time=now - timedelta(minutes=50),
                               end_time=now - timedelta(minutes=49), scheduled_start=now - timedelta(minutes=50))
    slow = factories.flow_run(flow, State.FAILED, start_time=now - timedelta(minutes=40),
                              end_time=now - timedelta(minutes=10), scheduled_start=now - timedelta(minutes=40))
    factories.flow_run(flow, State.RUNNING, start_time=now - timedelta(minutes=5), scheduled_start=now - timedelta(minutes=5))
    page = as_operator.get("/dashboard/timeline/?window=60")
    points = {p["run"].pk: p for p in page.context["scatter"]["points"]}
    assert set(points) == {quick.pk, slow.pk}  # the running one has no duration yet
    assert points[slow.pk]["y"] < points[quick.pk]["y"]  # longer is higher (smaller y)
    assert points[quick.pk]["x"] < points[slow.pk]["x"]  # earlier is further left
    assert page.context["scatter"]["longest"] == "30 min"
    assert 'aria-label="2 finished runs; the longest took 30 min"' in page.content.decode()


def test_the_older_hours_parameter_still_works(as_operator, ws):
    page = as_operator.get("/dashboard/timeline/?hours=24")
    assert page.context["window"] == 1440
