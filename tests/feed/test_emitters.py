"""Every part of the system says what happened: the events of pauses, agents, polls, heartbeats and recovery."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs import actions
from runs.audit import Who
from runs.claiming import claim_due_runs, record_poll
from runs.models import Actor, Agent, AgentStatus, FlowRun, ScheduleStatus, State
from runs.scheduling import schedule_future_runs
from services import lazarus, zombie_killer
from tests import factories

pytestmark = pytest.mark.django_db
WHO = Who("ada", None, "api")


def only(events, name):
    found = [event for event in events if event.name == name]
    assert len(found) == 1, [event.name for event in events]
    return found[0]


# --- schedules and queues: the actions layer ----------------------------------------------------

def test_pausing_and_resuming_a_schedule_emit_paused_and_resumed_once(ws, flush_events):
    flow = factories.flow(ws)
    schedule = factories.schedule(flow)
    schedule_future_runs([schedule], timezone.now())
    deleted = actions.pause_schedule(schedule, who=WHO)
    actions.pause_schedule(schedule, who=WHO)  # no change, no event
    paused = only(flush_events(), "schedule.paused")
    assert paused.resource == {"kind": "schedule", "id": str(schedule.pk), "name": schedule.slug}
    assert paused.related == [{"kind": "flow", "id": str(flow.pk), "name": flow.name}]
    assert paused.payload == {"by": "ada", "via": "api", "runs_deleted": deleted} and deleted == 10
    created = actions.resume_schedule(schedule, who=WHO)
    actions.resume_schedule(schedule, who=WHO)
    resumed = only(flush_events(), "schedule.resumed")
    assert resumed.payload["runs_created"] == created == 10
    assert resumed.workspace_id == ws.pk


def test_a_schedule_paused_by_editing_its_status_emits_paused(ws, flush_events):
    schedule = factories.schedule(factories.flow(ws))
    before = actions.audit.snapshot(schedule)

    def save():
        schedule.status = ScheduleStatus.PAUSED
        schedule.save()
        return schedule

    actions.save_with_audit(save, who=WHO, action="schedule.change", before=before)
    assert only(flush_events(), "schedule.paused").resource["id"] == str(schedule.pk)


def test_pausing_and_resuming_a_queue_over_the_api_emit_events(api, key_for, prefix, ws, flush_events):
    queue = factories.work_queue(ws, name="gpu")
    client = api.as_key(key_for())
    assert client.post(f"{prefix}/work_queues/{queue.pk}/pause/").status_code == 200
    assert client.post(f"{prefix}/work_queues/{queue.pk}/pause/").status_code == 200  # already paused
    event = only(flush_events(), "work-queue.paused")
    assert event.resource == {"kind": "work-queue", "id": str(queue.pk), "name": "gpu"}
    assert client.post(f"{prefix}/work_queues/{queue.pk}/resume/").status_code == 200
    only(flush_events(), "work-queue.resumed")
    # A limit is no pause: no event.
    client.post(f"{prefix}/work_queues/{queue.pk}/concurrency_limit/", {"concurrency_limit": 2}, format="json")
    assert flush_events().filter(name__startswith="work-queue.").count() == 2


# --- agents -------------------------------------------------------------------------------------

def test_a_new_agent_registering_is_online_once(agent_client, prefix, ws, flush_events):
    body = {"name": "box", "queues": ["default"]}
    agent_id = agent_client.post(f"{prefix}/agent/register", body, format="json").json()["id"]
    agent_client.post(f"{prefix}/agent/register", body, format="json")  # already online: no event
    event = only(flush_events(), "agent.online")
    assert event.resource == {"kind": "agent", "id": str(agent_id), "name": "box"}
    assert event.payload == {"reason": "registered"}


def test_an_offline_agent_that_beats_is_online_again_once(agent_client, prefix, ws, flush_events):
    agent = factories.agent(ws, status=AgentStatus.OFFLINE, name="box")
    for _ in range(3):
        assert agent_client.post(f"{prefix}/agent/heartbeat", {"agent_id": agent.pk}, format="json").status_code == 200
    event = only(flush_events(), "agent.online")
    assert event.payload == {"reason": "heartbeat"} and event.resource["name"] == "box"
    agent.refresh_from_db()
    assert agent.status == AgentStatus.ONLINE
    # Shutting down says so, once.
    for _ in range(2):
        agent_client.post(f"{prefix}/agent/heartbeat", {"agent_id": agent.pk, "status": "OFFLINE"}, format="json")
    assert only(flush_events(), "agent.offline").payload == {"reason": "the agent is stopping"}


def test_a_heartbeat_of_an_unknown_agent_is_a_404_without_events(agent_client, prefix, ws, other_ws, flush_events):
    stranger = factories.agent(other_ws, status=AgentStatus.OFFLINE)
    answer = agent_client.post(f"{prefix}/agent/heartbeat", {"agent_id": stranger.pk}, format="json")
    assert answer.status_code == 404
    assert not flush_events().exists()
    assert Agent.objects.get(pk=stranger.pk).status == AgentStatus.OFFLINE


def test_an_offline_agent_that_polls_is_online_once_with_a_fresh_heartbeat(agent_client, prefix, ws, flush_events):
    old = timezone.now() - timedelta(hours=1)
    agent = factories.agent(ws, status=AgentStatus.OFFLINE, last_heartbeat=old)
    for _ in range(2):
        assert agent_client.post(f"{prefix}/agent/claim", {"agent_id": agent.pk}, format="json").status_code == 200
    assert only(flush_events(), "agent.online").payload == {"reason": "poll"}
    agent.refresh_from_db()
    assert agent.status == AgentStatus.ONLINE and agent.last_heartbeat > old


# --- flow run heartbeats --------------------------------------------------------------------------

def test_each_flow_run_heartbeat_is_an_event_naming_flow_queue_and_agent(reporter, prefix, ws, flush_events):
    queue, agent = factories.work_queue(ws), factories.agent(ws)
    run = factories.flow_run(factories.flow(ws), State.RUNNING, work_queue=queue, agent=agent)
    for _ in range(2):
        assert reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat").json() == {"state": "RUNNING"}
    beats = list(flush_events().filter(name="flow-run.heartbeat"))
    assert len(beats) == 2
    assert beats[0].resource == {"kind": "flow-run", "id": str(run.pk)}
    assert {(r["kind"], r["id"]) for r in beats[0].related} == {
        ("flow", str(run.flow_id)), ("work-queue", str(queue.pk)), ("agent", str(agent.pk))}
    assert beats[0].payload == {"state": "RUNNING"}


def test_task_run_heartbeats_are_not_events(reporter, prefix, ws, flush_events):
    task_run = factories.task_run(factories.flow_run(factories.flow(ws), State.RUNNING))
    assert reporter.post(f"{prefix}/agent/task_runs/{task_run.pk}/heartbeat").status_code == 204
    assert not flush_events().exists()


def test_a_refused_flow_run_heartbeat_emits_nothing(reporter, prefix, ws, flush_events):
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    FlowRun.objects.filter(pk=run.pk).update(token_generation=5)  # the reporter's token is of this attempt...
    url = f"{prefix}/agent/flow_runs/{run.pk}/heartbeat"
    token = reporter.token_for_request(url, None)
    FlowRun.objects.filter(pk=run.pk).update(token_generation=6)  # ...which is superseded now
    reporter.client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert reporter.client.post(url).status_code == 409
    assert not flush_events().exists()


# --- polls ----------------------------------------------------------------------------------------

def test_a_queue_polled_emits_polled_at_most_once_per_interval(ws, flush_events, now):
    queue = factories.work_queue(ws, name="default")
    agent = factories.agent(ws, name="box")
    agent.queues.add(queue)
    for seconds in (0, 10, 59):
        claim_due_runs(agent, limit=5, now=now + timedelta(seconds=seconds))
    polled = only(flush_events(), "work-queue.polled")
    assert polled.resource == {"kind": "work-queue", "id": str(queue.pk), "name": "default"}
    assert polled.related == [{"kind": "agent", "id": str(agent.pk), "name": "box"}]
    queue.refresh_from_db()
    assert queue.last_polled == now  # exact to the interval: the polls within it wrote nothing
    claim_due_runs(agent, limit=5, now=now + timedelta(seconds=61))
    assert flush_events().filter(name="work-queue.polled").count() == 2
    queue.refresh_from_db()
    assert queue.last_polled == now + timedelta(seconds=61)


def test_the_polled_interval_is_a_setting(ws, flush_events, now, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_QUEUE_POLLED_EVERY_SECONDS": 5}
    queue = factories.work_queue(ws)
    assert record_poll([queue.pk], now) == [queue.pk]
    assert record_poll([queue.pk], now + timedelta(seconds=4)) == []
    assert record_poll([queue.pk], now + timedelta(seconds=6)) == [queue.pk]
    assert flush_events().filter(name="work-queue.polled").count() == 2


def test_a_poll_writes_one_statement_whatever_it_records(ws, now):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    ids = [factories.work_queue(ws).pk for _ in range(5)]
    for moment, recorded in ((now, sorted(ids)), (now + timedelta(seconds=1), [])):
        with CaptureQueriesContext(connection) as captured:
            assert sorted(record_poll(ids, moment)) == recorded
        # The one conditional UPDATE (beside savepoints and PostgreSQL's SET LOCAL): no read first.
        statements = [q["sql"].split()[0].upper() for q in captured.captured_queries]
        assert statements.count("UPDATE") == 1 and "SELECT" not in statements, statements


# --- recovery -------------------------------------------------------------------------------------

def test_lazarus_reschedule_emits_rescheduled_with_the_attempt_and_reason(ws, flush_events, now):
    agent = factories.agent(ws)
    stuck = factories.flow_run(factories.flow(ws), State.SUBMITTED, agent=agent,
                               state_changed=now - timedelta(hours=2), lazarus_count=2)
    assert lazarus.run_once(now) == {"rescheduled": 1, "failed": 0}
    events = list(flush_events())
    rescheduled = only(events, "flow-run.rescheduled")
    assert rescheduled.resource == {"kind": "flow-run", "id": str(stuck.pk)}
    assert {"kind": "agent", "id": str(agent.pk)} in rescheduled.related
    assert rescheduled.payload == {"attempt": 3, "max_reschedules": 10, "by": "lazarus",
                                   "reason": "submitted but not started within 600 s"}
    state = only(events, "flow-run.state.scheduled")
    assert state.payload["verdict"] == "rescheduled" and state.payload["attempt"] == 3
    assert state.payload["actor"] == Actor.LAZARUS and state.payload["from"] == State.SUBMITTED


def test_lazarus_giving_up_says_so_in_the_failed_event(ws, flush_events, now):
    factories.flow_run(factories.flow(ws), State.SUBMITTED, state_changed=now - timedelta(hours=2), lazarus_count=10)
    assert lazarus.run_once(now) == {"rescheduled": 0, "failed": 1}
    events = list(flush_events())
    assert not [e for e in events if e.name == "flow-run.rescheduled"]
    assert only(events, "flow-run.state.failed").payload["verdict"] == "gave up"


def test_zombie_killer_verdicts_are_in_the_state_events(ws, flush_events, now):
    old = now - timedelta(hours=3)
    run = factories.flow_run(factories.flow(ws), State.RUNNING, start_time=old, last_heartbeat=old,
                             heartbeat_interval=30)
    factories.task_run(run, State.RUNNING, last_heartbeat=old)
    assert zombie_killer.run_once(now) == {"task_runs_failed": 1, "flow_runs_crashed": 1}
    events = list(flush_events())
    assert only(events, "task-run.state.failed").payload["verdict"] == "no heartbeat"
    crashed = only(events, "flow-run.state.crashed")
    assert crashed.payload["verdict"] == "no sign of life" and crashed.payload["threshold_seconds"] == 1800

