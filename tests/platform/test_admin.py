"""The admin: lists, the pause confirmation, run now, cancel, mark failed, and who may act."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils import timezone

from runs.models import FlowRun, Role, Schedule, ScheduleStatus, State, StateChange
from runs.scheduling import schedule_future_runs
from tests import factories


@pytest.fixture
def flow(ws):
    return factories.flow(ws, name="etl")


@pytest.fixture
def schedule(flow):
    s = factories.schedule(flow, slug="hourly", interval_seconds=3600)
    schedule_future_runs([s], timezone.now())
    return s


def staff(ws, role):
    user = factories.member(ws, role=role)
    user.is_staff = True
    user.save()
    return user


def post_action(client, model, action, ids, **extra):
    return client.post(f"/admin/runs/{model}/", {"action": action, ACTION_CHECKBOX_NAME: [str(i) for i in ids], **extra})


def test_admin_login_page_and_changelists_render(admin_client, flow, schedule):
    factories.flow_run(flow, state=State.RUNNING, last_heartbeat=timezone.now())
    for model in ["runs/account", "runs/workspace", "runs/membership", "runs/apikey", "runs/flow", "runs/flowversion",
                  "runs/schedule", "runs/flowrun", "runs/taskrun", "runs/statechange", "runs/log", "runs/workqueue",
                  "runs/agent", "events/event"]:
        response = admin_client.get(f"/admin/{model}/")
        assert response.status_code == 200, model


def test_run_detail_shows_history_inline(admin_client, flow):
    from runs.models import Actor
    from runs.states import set_flow_run_state

    run = set_flow_run_state(factories.flow_run(flow), State.LATE, actor=Actor.LATE_RUNS, message="past grace")
    page = admin_client.get(f"/admin/runs/flowrun/{run.pk}/change/").content.decode()
    assert "State history" in page and "past grace" in page


def test_pause_asks_first_and_says_how_many_runs_it_deletes(admin_client, schedule):
    response = post_action(admin_client, "schedule", "pause", [schedule.pk])
    assert response.status_code == 200
    assert "deletes <strong>10</strong> future auto-scheduled runs" in response.content.decode()
    assert Schedule.objects.get(pk=schedule.pk).status == ScheduleStatus.ACTIVE  # nothing yet


def test_confirmed_pause_deletes_future_auto_scheduled_runs_only(admin_client, flow, schedule):
    started = factories.flow_run(flow, state=State.RUNNING, schedule=schedule, auto_scheduled=True,
                                 schedule_slug="hourly", scheduled_start=timezone.now() - timedelta(minutes=5))
    manual = factories.flow_run(flow, schedule=schedule, scheduled_start=timezone.now() + timedelta(hours=3))
    response = post_action(admin_client, "schedule", "pause", [schedule.pk], confirmed="yes")
    assert response.status_code == 302
    assert Schedule.objects.get(pk=schedule.pk).status == ScheduleStatus.PAUSED
    assert set(FlowRun.objects.values_list("pk", flat=True)) == {started.pk, manual.pk}


def test_resume_recreates_the_future_runs(admin_client, schedule):
    post_action(admin_client, "schedule", "pause", [schedule.pk], confirmed="yes")
    post_action(admin_client, "schedule", "resume", [schedule.pk])
    assert Schedule.objects.get(pk=schedule.pk).status == ScheduleStatus.ACTIVE
    assert FlowRun.objects.filter(schedule=schedule, auto_scheduled=True).count() == 10


def test_run_now_records_who_asked(client, ws, flow):
    operator = staff(ws, Role.OPERATOR)
    client.force_login(operator)
    post_action(client, "flow", "run_now", [flow.pk])
    run = FlowRun.objects.get()
    assert run.created_by == operator and not run.auto_scheduled and run.state == State.SCHEDULED
    assert StateChange.objects.get(flow_run=run).user == operator


def test_cancel_stops_waiting_runs_and_asks_running_ones(admin_client, flow):
    waiting = factories.flow_run(flow, state=State.SCHEDULED)
    running = factories.flow_run(flow, state=State.RUNNING)
    finished = factories.flow_run(flow, state=State.COMPLETED)
    post_action(admin_client, "flowrun", "cancel", [waiting.pk, running.pk, finished.pk])
    states = dict(FlowRun.objects.values_list("pk", "state"))
    assert states == {waiting.pk: State.CANCELLED, running.pk: State.CANCELLING, finished.pk: State.COMPLETED}


def test_mark_failed_writes_history_with_the_user(admin_client, admin_user, flow):
    run = factories.flow_run(flow, state=State.RUNNING)
    post_action(admin_client, "flowrun", "mark_failed", [run.pk])
    change = StateChange.objects.get(flow_run=run)
    assert change.to_state == State.FAILED and change.user == admin_user


def test_a_viewer_cannot_act(client, ws, schedule):
    client.force_login(staff(ws, Role.VIEWER))
    assert client.get("/admin/runs/schedule/").status_code == 200  # may look
    post_action(client, "schedule", "pause", [schedule.pk], confirmed="yes")
    assert Schedule.objects.get(pk=schedule.pk).status == ScheduleStatus.ACTIVE
    assert client.get(f"/admin/runs/schedule/{schedule.pk}/change/").status_code == 200  # read-only view
    assert client.post(f"/admin/runs/schedule/{schedule.pk}/delete/", {"post": "yes"}).status_code == 403


def test_staff_see_only_their_workspaces(client, ws, other_ws, flow):
    theirs = factories.flow(other_ws, name="not-yours")
    client.force_login(staff(ws, Role.ADMIN))
    page = client.get("/admin/runs/flow/").content.decode()
    assert "etl" in page and "not-yours" not in page
    assert client.get(f"/admin/runs/flow/{theirs.pk}/change/").status_code == 302  # "does not exist" redirect


def test_admin_form_rejects_an_invalid_cron_naming_the_field(admin_client, flow):
    response = admin_client.post("/admin/runs/schedule/add/", {
        "flow": flow.pk, "slug": "bad", "kind": "cron", "cron": "every tuesday", "timezone": "UTC",
        "status": "ACTIVE", "dst_nonexistent": "shift", "dst_ambiguous": "once", "parameters": "{}",
        "calendar": "{}", "catchup_max_runs": 0,
    })
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "cron" in errors
    assert not Schedule.objects.filter(slug="bad").exists()


def test_admin_creates_an_api_key_and_shows_the_secret_once(admin_client, ws):
    response = admin_client.post("/admin/runs/apikey/add/", {"workspace": ws.pk, "name": "ci", "role": "viewer"},
                                 follow=True)
    text = response.content.decode()
    assert "shown this once: orch_" in text
    from runs.models import ApiKey

    key = ApiKey.objects.get(name="ci")
    assert key.hashed_secret and key.prefix.startswith("orch_")
