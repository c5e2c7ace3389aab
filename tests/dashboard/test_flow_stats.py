"""A flow's record: runs per day by outcome, success rate, duration percentiles, bounded reads."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.dashboard import flow_stats
from runs.models import FlowRun, State
from tests import factories

pytestmark = pytest.mark.django_db


def test_percentile_by_nearest_rank():
    values = list(range(1, 101))
    assert (flow_stats.percentile(values, 0.5), flow_stats.percentile(values, 0.9),
            flow_stats.percentile(values, 0.99)) == (50, 90, 99)
    assert flow_stats.percentile([], 0.5) is None and flow_stats.percentile([7], 0.99) == 7


def test_runs_per_day_counts_outcomes_for_every_day_of_the_window(ws):
    flow, other = factories.flow(ws), factories.flow(ws)
    now = timezone.now().replace(hour=12)
    for days_ago, state in ((0, State.COMPLETED), (0, State.FAILED), (0, State.RUNNING), (2, State.CRASHED),
                            (20, State.COMPLETED)):
        factories.flow_run(flow, state, scheduled_start=now - timedelta(days=days_ago))
    factories.flow_run(other, State.COMPLETED, scheduled_start=now)
    days = flow_stats.runs_per_day(flow, now)
    assert len(days) == flow_stats.DAYS and days[-1]["day"] == now.date()
    assert (days[-1]["completed"], days[-1]["failed"], days[-1]["other"]) == (1, 1, 1)
    assert days[-3]["failed"] == 1 and sum(d["total"] for d in days) == 4  # 20 days ago: outside
    assert days[-1]["completed_pct"] == pytest.approx(100 / 3, abs=0.01)


def test_record_gives_success_rate_and_duration_percentiles_of_the_newest_runs(ws, monkeypatch):
    monkeypatch.setattr(flow_stats, "DURATION_SAMPLE", 10)
    flow = factories.flow(ws)
    now = timezone.now()
    rows = []
    for i in range(10):  # the newest ten: 8 completed taking 10..80 s, 2 failed
        start = now - timedelta(hours=i + 1)
        state = State.FAILED if i in (3, 7) else State.COMPLETED
        rows.append(FlowRun(workspace=ws, flow=flow, state=state, scheduled_start=start, start_time=start,
                            end_time=start + timedelta(seconds=10 * (i + 1))))
    old = now - timedelta(days=3)  # older than the sample: not read
    rows.append(FlowRun(workspace=ws, flow=flow, state=State.FAILED, scheduled_start=old, start_time=old,
                        end_time=old + timedelta(hours=5)))
    FlowRun.objects.bulk_create(rows)
    result = flow_stats.record(flow, now)
    assert (result["sample"], result["completed"], result["failed"]) == (10, 8, 2)
    assert result["success_rate"] == 80.0
    assert (result["p50"], result["p90"], result["p99"]) == (50.0, 100.0, 100.0)
    assert result["durations"] == 8


def test_the_flow_page_shows_its_record_and_runs_per_day(client, ws, django_assert_max_num_queries):
    from runs.models import Role

    client.force_login(factories.member(ws, role=Role.VIEWER))
    flow = factories.flow(ws, name="etl")
    now = timezone.now()
    for i in range(4):
        start = now - timedelta(hours=i + 1)
        factories.flow_run(flow, State.FAILED if i == 0 else State.COMPLETED, scheduled_start=start, start_time=start,
                           end_time=start + timedelta(seconds=90))
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        page = client.get(f"/dashboard/flows/{flow.pk}/")
    html = page.content.decode()
    assert page.context["record"]["success_rate"] == 75.0
    assert "<strong>75.0 %</strong>" in html and "1 min · 1 min · 1 min" in html
    assert f'href="/dashboard/runs/?flow={flow.pk}"' in html
    FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, state=State.COMPLETED, scheduled_start=now)
                                 for _ in range(300)])
    with django_assert_max_num_queries(len(few.captured_queries)):  # the same with 300 more runs
        assert client.get(f"/dashboard/flows/{flow.pk}/").status_code == 200
