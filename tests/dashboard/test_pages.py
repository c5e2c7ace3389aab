"""The dashboard pages as a user sees them: what each shows, who sees it, how many queries it costs."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from runs.models import Actor, Log, LogLevel, State, StateChange
from tests import factories

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def test_pages_need_a_login_and_send_to_the_dashboard_login(client):
    response = client.get("/dashboard/timeline/")
    assert response.status_code == 302
    assert response["Location"].startswith("/dashboard/login/?next=/dashboard/timeline/")


def test_login_page_logs_a_member_in_and_opens_the_overview(client, operator):
    response = client.post("/dashboard/login/", {"username": operator.username, "password": "pw-for-tests-123"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200


def test_root_redirects_to_the_dashboard(client):
    assert client.get("/")["Location"] == "/dashboard/"


def test_overview_counts_runs_by_state_and_shows_late_runs(as_operator, ws):
    flow = factories.flow(ws, name="nightly-etl")
    now = timezone.now()
    factories.flow_run(flow, State.COMPLETED, scheduled_start=now - timedelta(hours=1))
    factories.flow_run(flow, State.COMPLETED, scheduled_start=now - timedelta(hours=2))
    late = factories.flow_run(flow, State.LATE, scheduled_start=now - timedelta(minutes=5), name="late-one")
    factories.flow_run(flow, State.COMPLETED, scheduled_start=now - timedelta(hours=30))  # outside 24 h
    page = as_operator.get("/dashboard/")
    assert page.status_code == 200
    by_state = dict(page.context["by_state"])
    assert by_state["COMPLETED"] == 2 and by_state["LATE"] == 1 and by_state["FAILED"] == 0
    assert page.context["late_total"] == 1
    assert f"/dashboard/runs/{late.pk}/" in page.content.decode()


@override_settings(ORCHESTRATOR={"ZOMBIE_KILLER_THRESHOLD_SECONDS": 600, "SCHEDULER_RUNS_AHEAD": 10})
def test_heartbeat_age_is_green_amber_red_against_the_zombie_killer_threshold(as_operator, ws):
    flow = factories.flow(ws)
    now = timezone.now()
    fresh = factories.flow_run(flow, State.RUNNING, last_heartbeat=now - timedelta(seconds=20))
    ageing = factories.flow_run(flow, State.RUNNING, last_heartbeat=now - timedelta(seconds=400))
    stale = factories.flow_run(flow, State.RUNNING, last_heartbeat=now - timedelta(seconds=900))
    page = as_operator.get("/dashboard/")
    verdicts = {run.pk: beat.verdict for run, beat in page.context["heartbeats"]}
    assert verdicts == {fresh.pk: "fresh", ageing.pk: "ageing", stale.pk: "stale"}
    # The most silent run comes first: the one an operator must look at.
    assert page.context["heartbeats"][0][0].pk == stale.pk
    html = page.content.decode()
    assert "beat-stale" in html and "stale" in html and "15 min ago" in html


def test_polling_returns_only_the_live_partial(as_operator):
    page = as_operator.get("/dashboard/", **HTMX)
    html = page.content.decode()
    assert html.lstrip().startswith('<div id="overview-live"')
    assert "<html" not in html and 'hx-trigger="sse:changed, every 15s"' in html


def test_overview_says_when_towel_has_no_report_or_shows_its_verdicts(as_operator, monkeypatch):
    import services.towel as towel

    monkeypatch.delattr(towel, "health_report", raising=False)
    assert as_operator.get("/dashboard/").context["services"] is None
    report = {"scheduler": {"healthy": False, "last_success": None, "last_error": "boom",
                            "last_error_at": "2026-01-01T00:00:00+00:00", "interval_seconds": 10}}
    monkeypatch.setattr(towel, "health_report", lambda now: report, raising=False)
    page = as_operator.get("/dashboard/")
    assert page.context["services"] == report
    assert "unhealthy" in page.content.decode() and "boom" in page.content.decode()


def test_overview_says_why_each_service_is_healthy_or_not(as_operator):
    from services.beat import apply_service_intervals
    from services.models import ServiceSchedule

    apply_service_intervals()
    ServiceSchedule.objects.update(expected_since=timezone.now())  # a fresh install: nothing ran yet
    html = as_operator.get("/dashboard/").content.decode()
    assert "waiting for its first pass, due by" in html and "unhealthy" not in html
    ServiceSchedule.objects.update(expected_since=timezone.now() - timedelta(hours=1))
    html = as_operator.get("/dashboard/").content.decode()
    assert "unhealthy" in html and "no success since it was expected at" in html


def test_other_workspaces_runs_are_not_shown(as_operator, other_ws):
    hidden = factories.flow_run(factories.flow(other_ws), State.LATE, scheduled_start=timezone.now())
    assert as_operator.get("/dashboard/").context["late_total"] == 0
    assert as_operator.get(f"/dashboard/runs/{hidden.pk}/").status_code == 404


def test_timeline_draws_one_bar_per_run_of_the_window_with_its_state_written(as_operator, ws):
    flow = factories.flow(ws)
    now = timezone.now()
    inside = [
        factories.flow_run(flow, State.COMPLETED, start_time=now - timedelta(hours=2), end_time=now - timedelta(hours=1)),
        factories.flow_run(flow, State.RUNNING, start_time=now - timedelta(minutes=30), last_heartbeat=now),
        factories.flow_run(flow, State.CRASHED, start_time=now - timedelta(hours=3), end_time=now - timedelta(hours=2)),
        factories.flow_run(flow, State.LATE, scheduled_start=now - timedelta(minutes=10)),
    ]
    factories.flow_run(flow, State.COMPLETED, start_time=now - timedelta(hours=9), end_time=now - timedelta(hours=8))
    page = as_operator.get("/dashboard/timeline/?hours=6")
    bars = page.context["bars"]
    assert {b["run"].pk for b in bars} == {r.pk for r in inside}
    by_state = {b["run"].state: b for b in bars}
    assert by_state["CRASHED"]["alarm"] and by_state["LATE"]["alarm"] and not by_state["COMPLETED"]["alarm"]
    assert by_state["RUNNING"]["heartbeat"] is not None
    html = page.content.decode()
    assert html.count('class="bar ') == 4
    for state in ("COMPLETED", "RUNNING", "CRASHED", "LATE"):
        assert f">{state}</span>" in html


def test_timeline_filters_by_flow(as_operator, ws):
    now = timezone.now()
    shown, other = factories.flow(ws), factories.flow(ws)
    run = factories.flow_run(shown, State.RUNNING, start_time=now - timedelta(minutes=5))
    factories.flow_run(other, State.RUNNING, start_time=now - timedelta(minutes=5))
    bars = as_operator.get(f"/dashboard/timeline/?flow={shown.pk}").context["bars"]
    assert [b["run"].pk for b in bars] == [run.pk]


def test_run_detail_shows_history_with_actors_task_gantt_and_filtered_logs(as_operator, ws):
    now = timezone.now()
    run = factories.flow_run(factories.flow(ws), State.RUNNING, start_time=now - timedelta(minutes=3),
                             last_heartbeat=now - timedelta(seconds=5))
    StateChange.objects.create(flow_run=run, from_state="", to_state=State.SCHEDULED, actor=Actor.SCHEDULER,
                               timestamp=now - timedelta(minutes=5))
    StateChange.objects.create(flow_run=run, from_state=State.SCHEDULED, to_state=State.RUNNING, actor=Actor.AGENT,
                               message="claimed by agent-7", timestamp=now - timedelta(minutes=3))
    factories.task_run(run, State.COMPLETED, task_key="extract", start_time=now - timedelta(minutes=3),
                       end_time=now - timedelta(minutes=2))
    Log.objects.create(workspace=ws, flow_run=run, level=LogLevel.DEBUG, message="noisy detail")
    Log.objects.create(workspace=ws, flow_run=run, level=LogLevel.ERROR, message="disk almost full")
    page = as_operator.get(f"/dashboard/runs/{run.pk}/")
    html = page.content.decode()
    assert "by Scheduler" in html and "by Agent" in html and "claimed by agent-7" in html
    assert "extract" in html and page.context["gantt"][0]["width"] > 0
    assert "noisy detail" in html and "disk almost full" in html
    assert page.context["heartbeat"].verdict == "fresh"
    filtered = as_operator.get(f"/dashboard/runs/{run.pk}/?level={LogLevel.WARNING}").content.decode()
    assert "noisy detail" not in filtered and "disk almost full" in filtered


def test_recovery_review_lists_lazarus_and_zombie_killer_acts_with_attempts(as_operator, ws):
    now = timezone.now()
    flow = factories.flow(ws, name="fragile")
    run = factories.flow_run(flow, State.SCHEDULED, lazarus_count=2)
    for minutes in (50, 20):
        Log.objects.create(workspace=ws, flow_run=run, source="lazarus", message="Rescheduled: no task run alive",
                           timestamp=now - timedelta(minutes=minutes))
    StateChange.objects.create(flow_run=run, from_state=State.RUNNING, to_state=State.CRASHED,
                               actor=Actor.ZOMBIE_KILLER, message="no heartbeat", timestamp=now - timedelta(minutes=10))
    Log.objects.create(workspace=ws, flow_run=run, source="agent", message="ordinary line")
    old_run = factories.flow_run(flow)
    Log.objects.create(workspace=ws, flow_run=old_run, source="lazarus", message="long ago",
                       timestamp=now - timedelta(days=10))
    rows = as_operator.get("/dashboard/recovery/?period=24").context["rows"]
    assert [(r["source"], r["attempt"]) for r in rows] == [("zombie-killer", 1), ("lazarus", 2), ("lazarus", 1)]
    assert rows[0]["reason"] == "RUNNING → CRASHED: no heartbeat"
    assert as_operator.get(f"/dashboard/recovery/?period=24&flow={factories.flow(ws).pk}").context["rows"] == []
    assert len(as_operator.get("/dashboard/recovery/?period=720").context["rows"]) == 4


def test_agents_page_shows_last_seen_health_and_queue_load(as_operator, ws):
    now = timezone.now()
    queue = factories.work_queue(ws, name="gpu", concurrency_limit=4, last_polled=now)
    agent = factories.agent(ws, name="box-1", last_heartbeat=now - timedelta(seconds=10))
    agent.queues.add(queue)
    factories.agent(ws, name="box-2", last_heartbeat=now - timedelta(hours=1), status="OFFLINE")
    flow = factories.flow(ws)
    factories.flow_run(flow, State.RUNNING, work_queue=queue)
    factories.flow_run(flow, State.RUNNING, work_queue=queue)
    page = as_operator.get("/dashboard/agents/")
    health = {row["agent"].name: row["healthy"] for row in page.context["agents"]}
    assert health == {"box-1": True, "box-2": False}
    gpu = next(row for row in page.context["queues"] if row["queue"].name == "gpu")
    assert gpu["queue"].in_use == 2 and gpu["healthy"]
    assert "2 / 4" in page.content.decode()


def test_timeline_stops_at_its_limit_and_says_there_are_more(as_operator, ws, monkeypatch):
    from runs.dashboard import queries

    monkeypatch.setattr(queries, "TIMELINE_LIMIT", 2)
    flow = factories.flow(ws)
    now = timezone.now()
    first = [factories.flow_run(flow, State.RUNNING, start_time=now - timedelta(minutes=m)) for m in (50, 40)]
    factories.flow_run(flow, State.COMPLETED, start_time=now - timedelta(minutes=30), end_time=now)
    page = as_operator.get("/dashboard/timeline/?hours=1")
    assert [b["run"].pk for b in page.context["bars"]] == [r.pk for r in first]
    assert page.context["more"] and "there are more" in page.content.decode()
