"""Automations' actions: each type does what it says in a real workspace, refuses another
workspace's ids with a field error, and one failing action never stops the next."""

import json

import pytest
from django.core.exceptions import ValidationError

from automations import actions as automation_actions
from automations.actions import destinations_missing, run_actions, validate_actions
from automations.models import Delivery, DeliveryKind, DeliveryStatus
from runs.models import Actor, AuditEntry, FlowRun, Role, ScheduleStatus, State, WorkQueue
from tests import factories
from tests.automations.conftest import action_event as event

pytestmark = pytest.mark.django_db


def fields_of(excinfo):
    return excinfo.value.message_dict


@pytest.fixture
def flow(ws):
    return factories.flow(ws, name="etl")


@pytest.fixture
def schedule(flow):
    return factories.schedule(flow, slug="hourly")


@pytest.fixture
def foreign(other_ws):
    flow = factories.flow(other_ws, name="theirs")
    return {"flow": flow, "schedule": factories.schedule(flow), "run": factories.flow_run(flow, State.RUNNING),
            "queue": factories.work_queue(other_ws)}


# --- validation ----------------------------------------------------------------------------------

def test_validation_cleans_every_type(ws, flow, schedule):
    queue = factories.work_queue(ws)
    run = factories.flow_run(flow)
    factories.secret(ws, name="HOOK_SECRET")
    cleaned = validate_actions([
        {"type": "pause-schedule", "schedule_id": str(schedule.pk)},
        {"type": "resume-schedule"},
        {"type": "run-flow", "flow_id": flow.pk, "parameters": {"day": "monday"}},
        {"type": "cancel-run", "flow_run_id": str(run.pk)},
        {"type": "mark-crashed"},
        {"type": "pause-queue", "work_queue_id": queue.pk},
        {"type": "call-webhook", "url": "https://example.com/hook", "secret_name": "HOOK_SECRET",
         "body": '{"name": {{ automation.name|json }}}'},
        {"type": "send-email", "to": ["ops@example.com", "admins", "ops@example.com"]},
        {"type": "post-slack", "url": "https://hooks.slack.com/services/T0/B0/x"},
    ], ws)
    assert cleaned[0] == {"type": "pause-schedule", "schedule_id": schedule.pk}
    assert cleaned[1] == {"type": "resume-schedule", "schedule_id": None}
    assert cleaned[3]["flow_run_id"] == str(run.pk)
    assert cleaned[7]["to"] == ["ops@example.com", "admins"]
    assert cleaned[6]["secret_name"] == "HOOK_SECRET"


@pytest.mark.parametrize("kind,field,key", [
    ("pause-schedule", "schedule_id", "schedule"), ("resume-schedule", "schedule_id", "schedule"),
    ("run-flow", "flow_id", "flow"), ("cancel-run", "flow_run_id", "run"), ("mark-crashed", "flow_run_id", "run"),
    ("pause-queue", "work_queue_id", "queue"), ("resume-queue", "work_queue_id", "queue"),
])
def test_another_workspaces_id_is_a_field_error(ws, foreign, kind, field, key):
    with pytest.raises(ValidationError) as excinfo:
        validate_actions([{"type": "send-email", "to": ["a@b.co"]}, {"type": kind, field: str(foreign[key].pk)}], ws)
    assert list(fields_of(excinfo)) == [f"actions[1].{field}"]
    assert "in this workspace" in fields_of(excinfo)[f"actions[1].{field}"][0]


@pytest.mark.parametrize("action,field", [
    ({"type": "call-webhook", "url": "ftp://example.com/x"}, "actions[0].url"),
    ({"type": "call-webhook", "url": "javascript:alert(1)"}, "actions[0].url"),
    ({"type": "call-webhook", "url": "file:///etc/passwd"}, "actions[0].url"),
    ({"type": "post-slack", "url": "https://" + "a" * 2000 + ".com"}, "actions[0].url"),
    ({"type": "post-slack", "url": "https:///no-host"}, "actions[0].url"),
    ({"type": "call-webhook", "url": "https://example.com", "secret_name": "NOPE"}, "actions[0].secret_name"),
    ({"type": "call-webhook", "url": "https://example.com", "body": "{{ a.b.c.d.e.f.g.h.i.j.k }}"}, "actions[0].body"),
    ({"type": "call-webhook", "url": "https://example.com", "body": "x" * 20_001}, "actions[0].body"),
    ({"type": "send-email", "to": ["not an address"]}, "actions[0].to"),
    ({"type": "send-email", "to": [f"u{i}@example.com" for i in range(21)]}, "actions[0].to"),
    ({"type": "run-flow"}, "actions[0].flow_id"),
    ({"type": "pause-schedule", "schedule_id": "abc"}, "actions[0].schedule_id"),
    ({"type": "cancel-run", "flow_run_id": "not-a-uuid"}, "actions[0].flow_run_id"),
    ({"type": "pause-queue", "paused": True}, "actions[0].paused"),
    ({"type": "launch-rockets"}, "actions[0].type"),
    ("pause-queue", "actions[0]"),
])
def test_bad_fields_are_named(ws, action, field):
    with pytest.raises(ValidationError) as excinfo:
        validate_actions([action], ws)
    assert field in fields_of(excinfo)


def test_at_most_ten_actions_and_a_list(ws):
    with pytest.raises(ValidationError) as excinfo:
        validate_actions([{"type": "resume-queue"}] * 11, ws)
    assert fields_of(excinfo) == {"actions": ["At most 10 actions."]}
    with pytest.raises(ValidationError) as excinfo:
        validate_actions({"type": "resume-queue"}, ws)
    assert "actions" in fields_of(excinfo)


def test_run_flow_parameters_must_be_an_object(ws, flow):
    with pytest.raises(ValidationError) as excinfo:
        validate_actions([{"type": "run-flow", "flow_id": flow.pk, "parameters": [1, 2]}], ws)
    assert "actions[0].parameters" in fields_of(excinfo)


def test_missing_destinations_are_allowed_but_reported(ws):
    cleaned = validate_actions([{"type": "pause-queue"}, {"type": "send-email", "to": []},
                                {"type": "call-webhook"}, {"type": "post-slack", "url": "https://chat.example.com/h"}],
                               ws)
    assert destinations_missing(cleaned) == ["actions[1].to", "actions[2].url"]
    assert destinations_missing([{"type": "send-email", "to": ["admins"]}]) == []


# --- running -------------------------------------------------------------------------------------

def test_pause_and_resume_a_named_schedule_through_the_actions_layer(ws, schedule, make_automation, make_firing, now):
    automation = make_automation([{"type": "pause-schedule", "schedule_id": schedule.pk}], name="stop etl")
    results = run_actions(automation, make_firing(automation), {"events": []}, now)
    schedule.refresh_from_db()
    assert schedule.status == ScheduleStatus.PAUSED
    assert results[0]["ok"] and results[0]["detail"].startswith("paused schedule etl/hourly")
    entry = AuditEntry.objects.get(action="schedule.pause")
    assert (entry.actor, entry.via, entry.workspace_id) == ("automation:stop etl", "automation", ws.pk)

    again = run_actions(automation, make_firing(automation), {"events": []}, now)
    assert again == [{"type": "pause-schedule", "ok": True, "detail": "schedule etl/hourly was already paused"}]

    automation.actions = [{"type": "resume-schedule", "schedule_id": schedule.pk}]
    results = run_actions(automation, make_firing(automation), {"events": []}, now)
    schedule.refresh_from_db()
    assert schedule.status == ScheduleStatus.ACTIVE and results[0]["ok"]
    assert AuditEntry.objects.filter(action="schedule.resume", via="automation").count() == 1


def test_an_omitted_schedule_is_the_firing_runs_schedule(ws, flow, schedule, make_automation, make_firing, now):
    run = factories.flow_run(flow, State.CRASHED, schedule=schedule)
    resource = {"kind": "flow-run", "id": str(run.pk)}
    automation = make_automation([{"type": "pause-schedule"}])
    results = run_actions(automation, make_firing(automation, resource),
                          {"events": [event(ws, "flow-run.state.crashed", resource)], "resource": resource}, now)
    schedule.refresh_from_db()
    assert results[0]["ok"], results
    assert schedule.status == ScheduleStatus.PAUSED


def test_run_flow_creates_one_manual_run_per_firing(ws, flow, make_automation, make_firing, now):
    automation = make_automation([{"type": "run-flow", "flow_id": flow.pk, "parameters": {"day": "monday"}}],
                                 name="rerun")
    firing = make_firing(automation)
    results = run_actions(automation, firing, {"events": []}, now)
    run = FlowRun.objects.get(flow=flow)
    assert results[0]["ok"] and "created run" in results[0]["detail"]
    assert run.parameters["day"] == "monday" and run.auto_scheduled is False and run.state == State.SCHEDULED
    history = run.history.get()
    assert (history.actor, history.message) == (Actor.AUTOMATION, 'Created by automation "rerun".')
    run_actions(automation, firing, {"events": []}, now)  # the same firing's actions again
    assert FlowRun.objects.filter(flow=flow).count() == 1


def test_cancel_run_moves_the_firing_run_with_a_message_naming_the_automation(ws, flow, make_automation, make_firing,
                                                                              now):
    waiting, running = factories.flow_run(flow), factories.flow_run(flow, State.RUNNING)
    automation = make_automation([{"type": "cancel-run", "flow_run_id": str(waiting.pk)}, {"type": "cancel-run"}],
                                 name="stop it")
    resource = {"kind": "flow-run", "id": str(running.pk)}
    results = run_actions(automation, make_firing(automation, resource), {"events": [], "resource": resource}, now)
    waiting.refresh_from_db()
    running.refresh_from_db()
    assert [r["ok"] for r in results] == [True, True]
    assert (waiting.state, running.state) == (State.CANCELLED, State.CANCELLING)
    last = waiting.history.last()
    assert (last.actor, last.message) == (Actor.AUTOMATION, 'By automation "stop it".')


def test_mark_crashed_and_a_refused_transition_does_not_stop_the_next(ws, flow, make_automation, make_firing, now):
    running, finished = factories.flow_run(flow, State.RUNNING), factories.flow_run(flow, State.COMPLETED)
    queue = factories.work_queue(ws)
    automation = make_automation([
        {"type": "mark-crashed", "flow_run_id": str(finished.pk)},
        {"type": "mark-crashed", "flow_run_id": str(running.pk)},
        {"type": "pause-queue", "work_queue_id": queue.pk},
    ])
    results = run_actions(automation, make_firing(automation), {"events": []}, now)
    assert [r["ok"] for r in results] == [False, True, True]
    assert "COMPLETED" in results[0]["detail"]
    running.refresh_from_db()
    finished.refresh_from_db()
    assert (running.state, finished.state) == (State.CRASHED, State.COMPLETED)
    assert running.history.last().actor == Actor.AUTOMATION
    assert WorkQueue.objects.get(pk=queue.pk).paused


def test_a_crashing_action_is_rolled_back_alone(ws, schedule, make_automation, make_firing, now, monkeypatch):
    real_pause = automation_actions.setup_actions.pause_schedule

    def pause_then_break(schedule, **kw):
        real_pause(schedule, **kw)  # its writes must be undone with the action's savepoint
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(automation_actions.setup_actions, "pause_schedule", pause_then_break)
    queue = factories.work_queue(ws)
    automation = make_automation([{"type": "pause-schedule", "schedule_id": schedule.pk},
                                  {"type": "pause-queue", "work_queue_id": queue.pk}])
    results = run_actions(automation, make_firing(automation), {"events": []}, now)
    assert results[0] == {"type": "pause-schedule", "ok": False, "detail": "failed: RuntimeError: disk on fire"}
    assert results[1]["ok"]
    schedule.refresh_from_db()
    assert schedule.status == ScheduleStatus.ACTIVE
    assert not AuditEntry.objects.filter(action="schedule.pause").exists()
    assert WorkQueue.objects.get(pk=queue.pk).paused


def test_queue_pause_and_resume_find_the_queue_the_events_name(ws, flow, make_automation, make_firing, now):
    queue = factories.work_queue(ws, name="gpu")
    resource = {"kind": "work-queue", "id": str(queue.pk), "name": "gpu"}
    automation = make_automation([{"type": "pause-queue"}])
    results = run_actions(automation, make_firing(automation, resource),
                          {"events": [event(ws, "work-queue.unhealthy", resource)], "resource": resource}, now)
    assert results == [{"type": "pause-queue", "ok": True, "detail": "paused work queue gpu"}]
    assert AuditEntry.objects.get(action="work_queue.pause").via == "automation"
    # A run's event names its queue as related: resume it from there.
    run = factories.flow_run(flow, State.FAILED)
    run_resource = {"kind": "flow-run", "id": str(run.pk)}
    automation.actions = [{"type": "resume-queue"}]
    results = run_actions(automation, make_firing(automation, run_resource), {
        "events": [event(ws, "flow-run.state.failed", run_resource, related=[{"kind": "work-queue", "id": str(queue.pk)}])],
        "resource": run_resource}, now)
    assert results[0]["ok"], results
    assert not WorkQueue.objects.get(pk=queue.pk).paused


def test_another_workspaces_rows_are_never_touched_even_if_stored(ws, foreign, make_automation, make_firing, now):
    # Actions saved before a row moved, or written past validation: still refused at run time.
    automation = make_automation([
        {"type": "pause-schedule", "schedule_id": foreign["schedule"].pk},
        {"type": "mark-crashed", "flow_run_id": str(foreign["run"].pk)},
        {"type": "pause-queue", "work_queue_id": foreign["queue"].pk},
        {"type": "run-flow", "flow_id": foreign["flow"].pk},
        {"type": "pause-queue"},
    ])
    results = run_actions(automation, make_firing(automation), {"events": []}, now)
    assert [r["ok"] for r in results] == [False] * 5
    assert all("no longer exists in this workspace" in r["detail"] for r in results[:4])
    assert results[4]["detail"].startswith("no work queue to act on")
    foreign["schedule"].refresh_from_db()
    foreign["run"].refresh_from_db()
    assert foreign["schedule"].status == ScheduleStatus.ACTIVE and foreign["run"].state == State.RUNNING
    assert not foreign["queue"].__class__.objects.get(pk=foreign["queue"].pk).paused
    assert FlowRun.objects.filter(flow=foreign["flow"]).count() == 1


def test_webhook_is_queued_with_the_firing_document_and_at_most_20_events(ws, make_automation, make_firing, now):
    factories.secret(ws, name="HOOK_SECRET")
    automation = make_automation([{"type": "call-webhook", "url": "https://hooks.example.com/in?token=abc",
                                   "secret_name": "HOOK_SECRET"}], name="tell ops")
    firing = make_firing(automation, {"kind": "flow-run", "id": "r1"})
    events = [event(ws, "flow-run.state.crashed", {"kind": "flow-run", "id": f"r{i}"}) for i in range(25)]
    results = run_actions(automation, firing, {"events": events, "resource": {"kind": "flow-run", "id": "r1"},
                                               "reason": "crashed"}, now)
    assert results == [{"type": "call-webhook", "ok": True, "detail": "queued webhook to https://hooks.example.com/in?…"}]
    delivery = Delivery.objects.get()
    assert (delivery.kind, delivery.status, delivery.secret_name, delivery.firing_id) == (
        DeliveryKind.WEBHOOK, DeliveryStatus.PENDING, "HOOK_SECRET", firing.pk)
    assert delivery.next_attempt == now
    body = json.loads(delivery.body)
    assert body["automation"] == {"id": automation.pk, "name": "tell ops"}
    assert body["reason"] == "crashed" and body["resource"] == {"kind": "flow-run", "id": "r1"}
    assert body["fired"] == now.isoformat()
    assert [e["resource"]["id"] for e in body["events"]] == [f"r{i}" for i in range(5, 25)]
    assert body["events"][0]["name"] == "flow-run.state.crashed"


def test_webhook_body_template(ws, make_automation, make_firing, now):
    automation = make_automation([{"type": "call-webhook", "url": "https://example.com/h",
                                   "body": '{"who": {{ automation.name|json }}, "first": "{{ events.0.name }}", '
                                           '"nothing": "{{ events.7.name }}"}'}], name='say "hi"')
    run_actions(automation, make_firing(automation),
                {"events": [event(ws, "agent.offline", {"kind": "agent", "id": "1"})]}, now)
    assert json.loads(Delivery.objects.get().body) == {"who": 'say "hi"', "first": "agent.offline", "nothing": ""}


def test_email_to_admins_means_their_addresses(ws, other_ws, make_automation, make_firing, now):
    factories.member(ws, role=Role.ADMIN, email="boss@example.com")
    factories.member(ws, role=Role.ADMIN, email="")  # no address: left out
    factories.member(ws, role=Role.VIEWER, email="viewer@example.com")
    factories.member(other_ws, role=Role.ADMIN, email="elsewhere@example.com")
    automation = make_automation([{"type": "send-email", "to": ["admins", "oncall@example.com", "boss@example.com"]}],
                                 name="runs failing")
    results = run_actions(automation, make_firing(automation), {"events": [], "reason": "2 runs failed"}, now)
    delivery = Delivery.objects.get()
    assert delivery.kind == DeliveryKind.EMAIL
    assert delivery.target == "boss@example.com, oncall@example.com"
    assert delivery.subject == "[Orchestrator] runs failing"
    assert 'Automation "runs failing" fired' in delivery.body and "Why: 2 runs failed" in delivery.body
    assert results[0] == {"type": "send-email", "ok": True,
                          "detail": "queued e-mail to boss@example.com, oncall@example.com"}


def test_email_without_anyone_to_write_to_fails_and_the_next_action_runs(ws, make_automation, make_firing, now):
    automation = make_automation([{"type": "send-email", "to": ["admins"]}, {"type": "send-email", "to": []},
                                  {"type": "post-slack", "url": "https://hooks.slack.com/services/T/B/SECRETPATH"}])
    results = run_actions(automation, make_firing(automation), {"events": []}, now)
    assert [r["ok"] for r in results] == [False, False, True]
    assert results[2]["detail"] == "queued Slack message to https://hooks.slack.com/…"
    delivery = Delivery.objects.get()
    assert delivery.kind == DeliveryKind.SLACK
    assert set(json.loads(delivery.body)) == {"text"}
    assert automation.name in json.loads(delivery.body)["text"]


def test_an_unknown_stored_action_is_reported_not_raised(ws, make_automation, make_firing, now):
    automation = make_automation([{"type": "self-destruct"}, "garbage", {"type": "pause-queue"}])
    results = run_actions(automation, make_firing(automation), {"events": []}, now)
    assert [r["ok"] for r in results] == [False, False, False]
    assert results[0]["detail"] == "unknown action type 'self-destruct'"
