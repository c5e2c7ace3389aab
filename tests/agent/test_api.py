"""The agent endpoints: register, claim, states, task runs, heartbeats, logs, and bad input."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from runs.models import Actor, Agent, AgentStatus, FlowRun, Log, Role, State, StateChange, TaskRun, WorkQueue
from runs.run_tokens import token_of
from tests import factories


@pytest.fixture
def operator(api, key_for):
    """An agent's client: a key with the agent role (the fixture keeps the name it had when agents held
    operator keys)."""
    return api.as_key(key_for(Role.AGENT))


@pytest.fixture
def registered(operator, prefix):
    answer = operator.post(f"{prefix}/agent/register", {"name": "box-1", "queues": ["default"]}, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()["id"]


def due_run(ws, queue_name="default", **kw):
    from runs.models import WorkQueue

    queue, _ = WorkQueue.objects.get_or_create(workspace=ws, name=queue_name)
    flow = factories.flow(ws, entrypoint="agent.examples.hello:hello")
    return factories.flow_run(flow, work_queue=queue, scheduled_start=timezone.now() - timedelta(seconds=1), **kw)


def test_register_creates_the_agent_and_its_missing_queues(operator, prefix, ws):
    answer = operator.post(f"{prefix}/agent/register", {"name": "box", "queues": ["default", "gpu"],
                                                        "version": "0.1", "heartbeat_interval": 5}, format="json")
    assert answer.status_code == 201
    agent = Agent.objects.get(pk=answer.json()["id"])
    assert sorted(agent.queues.values_list("name", flat=True)) == ["default", "gpu"]
    assert agent.heartbeat_interval == 5 and agent.status == AgentStatus.ONLINE and agent.last_heartbeat


def test_claim_returns_due_runs_with_entrypoint_parameters_and_merged_env(operator, prefix, ws, registered):
    run = due_run(ws, parameters={"name": "Ada"})
    run.work_queue.job_env = {"REGION": "eu", "TIER": "queue"}
    run.work_queue.save()
    run.flow_version.job_env = {"TIER": "flow"}
    run.flow_version.save()
    answer = operator.post(f"{prefix}/agent/claim", {"agent_id": registered, "max_runs": 5}, format="json")
    assert answer.status_code == 200
    [claimed] = answer.json()["runs"]
    assert claimed["entrypoint"] == "agent.examples.hello:hello"
    assert claimed["parameters"] == {"name": "Ada"}
    assert claimed["env"] == {"REGION": "eu", "TIER": "flow"}
    run.refresh_from_db()
    assert run.state == State.SUBMITTED and run.agent_id == registered
    assert run.work_queue.__class__.objects.get(pk=run.work_queue_id).last_polled is not None


def test_a_run_goes_running_then_completed_with_its_heartbeat_interval(operator, prefix, ws, registered, reporter):
    run = due_run(ws)
    operator.post(f"{prefix}/agent/claim", {"agent_id": registered}, format="json")
    answer = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state",
                           {"state": "RUNNING", "heartbeat_interval": 30}, format="json")
    assert answer.status_code == 200, answer.content
    run.refresh_from_db()
    assert run.heartbeat_interval == 30 and run.last_heartbeat is not None
    assert reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": "COMPLETED"},
                         format="json").json()["state"] == "COMPLETED"
    history = list(StateChange.objects.filter(flow_run=run, task_run=None).values_list("to_state", "actor"))
    assert history == [("SUBMITTED", "agent"), ("RUNNING", "agent"), ("COMPLETED", "agent")]


def test_an_illegal_transition_is_409_naming_both_states(operator, prefix, ws, registered, reporter):
    run = due_run(ws, state=State.COMPLETED)
    answer = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": "RUNNING"}, format="json")
    assert answer.status_code == 409
    message = answer.json()["error"]["message"]
    assert "COMPLETED" in message and "RUNNING" in message


@pytest.mark.parametrize("state", ["RUNNING", "COMPLETED"])
def test_reporting_the_state_a_run_is_in_is_409_naming_it_as_current_state(reporter, prefix, ws, state):
    # The agent's client takes this answer to a retried report as a success (agent/client.py).
    run = due_run(ws, state=state)
    task_run = factories.task_run(run, state=state)
    for path in (f"flow_runs/{run.pk}/state", f"task_runs/{task_run.pk}/state"):
        answer = reporter.post(f"{prefix}/agent/{path}", {"state": state}, format="json")
        assert answer.status_code == 409 and answer.json()["current_state"] == state


def test_a_stale_transition_is_409(operator, prefix, ws, registered, reporter):
    run = due_run(ws, state=State.CANCELLING)
    answer = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state",
                           {"state": "COMPLETED", "expected_state": "RUNNING"}, format="json")
    assert answer.status_code == 409
    assert "CANCELLING" in answer.json()["error"]["message"] and "RUNNING" in answer.json()["error"]["message"]
    assert FlowRun.objects.get(pk=run.pk).state == State.CANCELLING


def test_task_runs_are_created_once_per_key_and_report_states(operator, prefix, ws, registered, reporter):
    run = due_run(ws, state=State.RUNNING)
    url = f"{prefix}/agent/flow_runs/{run.pk}/task_runs"
    first = reporter.post(url, {"task_key": "greet", "max_retries": 2}, format="json")
    again = reporter.post(url, {"task_key": "greet"}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    task_id = first.json()["id"]
    assert reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "RUNNING"},
                         format="json").status_code == 200
    assert reporter.post(f"{prefix}/agent/task_runs/{task_id}/heartbeat").status_code == 204
    assert reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "COMPLETED"},
                         format="json").json()["state"] == "COMPLETED"
    task_run = TaskRun.objects.get(pk=task_id)
    assert task_run.max_retries == 2 and task_run.last_heartbeat is not None and task_run.run_count == 1


def test_a_new_attempt_after_lazarus_runs_a_task_the_zombie_killer_failed(operator, prefix, ws, registered, reporter):
    from runs.states import set_flow_run_state, transition_task_runs

    run = due_run(ws, state=State.RUNNING)
    url = f"{prefix}/agent/flow_runs/{run.pk}/task_runs"
    task_id = reporter.post(url, {"task_key": "load"}, format="json").json()["id"]
    reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "RUNNING"}, format="json")
    # The node dies: the Zombie Killer fails the task, Lazarus reschedules the run, a new agent starts it.
    transition_task_runs(TaskRun.objects.filter(pk=task_id), State.FAILED, actor=Actor.ZOMBIE_KILLER,
                         message='Marked "Failed" by a Zombie Killer process')
    later = timezone.now() + timedelta(seconds=5)
    run = set_flow_run_state(run, State.SCHEDULED, actor=Actor.LAZARUS,
                             updates={"start_time": None, "agent": None, "last_heartbeat": None})
    run = set_flow_run_state(run, State.SUBMITTED, actor=Actor.AGENT)
    set_flow_run_state(run, State.RUNNING, actor=Actor.AGENT, now=later)

    again = reporter.post(url, {"task_key": "load"}, format="json")
    assert again.status_code == 200 and again.json()["id"] == task_id and again.json()["state"] == "SCHEDULED"
    assert reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "RUNNING"},
                         format="json").status_code == 200
    assert reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "COMPLETED"},
                         format="json").status_code == 200
    history = list(StateChange.objects.filter(task_run_id=task_id).values_list("to_state", "actor"))
    assert history == [("RUNNING", "agent"), ("FAILED", "zombie-killer"), ("SCHEDULED", "agent"),
                       ("RUNNING", "agent"), ("COMPLETED", "agent")]


def test_asking_again_within_one_attempt_does_not_reopen_a_failed_task(operator, prefix, ws, registered, reporter):
    run = due_run(ws, state=State.RUNNING)
    url = f"{prefix}/agent/flow_runs/{run.pk}/task_runs"
    task_id = reporter.post(url, {"task_key": "load"}, format="json").json()["id"]
    reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "RUNNING"}, format="json")
    reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "FAILED"}, format="json")
    assert reporter.post(url, {"task_key": "load"}, format="json").json()["state"] == "FAILED"


def test_heartbeats_move_last_heartbeat(operator, prefix, ws, registered, reporter):
    run = due_run(ws, state=State.RUNNING)
    answer = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat")
    assert (answer.status_code, answer.json()) == (200, {"state": "RUNNING"})
    run.refresh_from_db()
    assert run.last_heartbeat is not None
    before = Agent.objects.get(pk=registered).last_heartbeat
    answer = operator.post(f"{prefix}/agent/heartbeat", {"agent_id": registered}, format="json")
    assert (answer.status_code, answer.json()) == (200, {"cancelling": []})
    assert Agent.objects.get(pk=registered).last_heartbeat >= before


def test_an_agent_shutting_down_reports_itself_offline(operator, prefix, registered):
    operator.post(f"{prefix}/agent/heartbeat", {"agent_id": registered, "status": "OFFLINE"}, format="json")
    assert Agent.objects.get(pk=registered).status == AgentStatus.OFFLINE


def test_a_flow_run_heartbeat_is_a_single_update(operator, prefix, ws, reporter):
    run = due_run(ws, state=State.RUNNING)
    url = f"{prefix}/agent/flow_runs/{run.pk}/heartbeat"
    reporter.client.credentials(HTTP_AUTHORIZATION=f"Bearer {reporter.token_for_request(url, None)}")
    with CaptureQueriesContext(connection) as first:
        assert reporter.client.post(url).json() == {"state": "RUNNING"}
    with CaptureQueriesContext(connection) as captured:
        assert reporter.client.post(url).json() == {"state": "RUNNING"}
    # The run's token is checked without a query; its workspace is read once and then known to the
    # process (runs/api/key_cache.py), so a beat is one UPDATE that also returns the run's state.
    assert [q["sql"].split()[0] for q in first.captured_queries].count("SELECT") == 1
    statements = [q["sql"] for q in captured.captured_queries]
    assert sum("UPDATE" in sql for sql in statements) == 1
    assert not any(sql.split()[0] in {"SELECT", "INSERT", "DELETE"} for sql in statements)
    if connection.vendor == "postgresql":
        # One round trip: an UPDATE … RETURNING that sets synchronous_commit off itself (runs/hot_sql.py).
        assert statements[0].startswith("UPDATE")
        assert "set_config('synchronous_commit', 'off', true)" in statements[0]
        # Its event goes to Redis from a thread; without Redis its buffer row is written in the
        # change's transaction (events/emit.py), here the test's, in a savepoint.
        if settings.REDIS_URL:
            assert len(statements) == 1
        else:
            assert len(statements) == 4 and "INSERT INTO events_pendingevent" in statements[2]


def test_agent_and_task_run_heartbeats_are_one_update_each(operator, prefix, ws, registered, reporter):
    task_run = factories.task_run(due_run(ws, state=State.RUNNING))
    operator.get(f"{prefix}/agent/ping")  # the key's last_used_at is written at most once a minute
    task_beat = f"{prefix}/agent/task_runs/{task_run.pk}/heartbeat"
    reporter.client.credentials(HTTP_AUTHORIZATION=f"Bearer {reporter.token_for_request(task_beat, None)}")
    # The task run's: its token checked without a query, one read of the workspace; the agent's: its
    # key (with its workspace) was verified by the ping and is cached (runs/api/key_cache.py), so only
    # its CANCELLING runs are read.
    for client, path, payload, reads in ((reporter.client, f"task_runs/{task_run.pk}/heartbeat", None, 1),
                                         (operator, "heartbeat", {"agent_id": registered}, 1)):
        with CaptureQueriesContext(connection) as captured:
            assert client.post(f"{prefix}/agent/{path}", payload, format="json").status_code in (200, 204)
        statements = [q["sql"].split()[0] for q in captured.captured_queries]
        assert statements.count("UPDATE") == 1 and statements.count("SELECT") == reads, statements
        assert not {"INSERT", "DELETE"} & set(statements)


def test_logs_are_stored_in_one_batch(operator, prefix, ws, reporter, flush_logs):
    run = due_run(ws, state=State.RUNNING)
    task = factories.task_run(run)
    lines = [{"flow_run_id": str(run.pk), "message": f"line {i}", "level": 20} for i in range(50)]
    lines.append({"flow_run_id": str(run.pk), "task_run_id": str(task.pk), "message": "boom", "level": 40})
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": lines}, format="json")
    assert answer.status_code == 201 and answer.json() == {"stored": 51, "refused": []}
    flush_logs()
    assert Log.objects.filter(flow_run=run).count() == 51
    assert Log.objects.get(task_run=task).level == 40


# --- Bad input -------------------------------------------------------------------------------

def test_a_wrong_key_is_401(api, prefix):
    answer = api.as_key("orch_not-a-key").post(f"{prefix}/agent/claim", {"agent_id": 1}, format="json")
    assert answer.status_code == 401


def test_a_revoked_key_is_401(api, prefix, ws):
    key, secret = factories.api_key(ws)
    key.revoked_at = timezone.now()
    key.save()
    assert api.as_key(secret).post(f"{prefix}/agent/heartbeat", {"agent_id": 1}, format="json").status_code == 401


def test_a_viewer_key_may_not_act_as_an_agent(api, prefix, key_for):
    answer = api.as_key(key_for(Role.VIEWER)).post(f"{prefix}/agent/register", {"name": "x", "queues": ["a"]},
                                                   format="json")
    assert answer.status_code == 403


def test_another_workspaces_run_is_404(operator, prefix, other_ws, reporter):
    run = due_run(other_ws, state=State.RUNNING)
    task = factories.task_run(run)
    assert reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": "COMPLETED"},
                         format="json").status_code == 404
    assert reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat").status_code == 404
    assert reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "t"},
                         format="json").status_code == 404
    assert reporter.post(f"{prefix}/agent/task_runs/{task.pk}/state", {"state": "COMPLETED"},
                         format="json").status_code == 404
    assert reporter.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(run.pk), "message": "x"}]},
                         format="json").status_code == 404
    assert FlowRun.objects.get(pk=run.pk).state == State.RUNNING


def test_another_workspaces_agent_is_404(operator, prefix, other_ws):
    stranger = factories.agent(other_ws)
    assert operator.post(f"{prefix}/agent/claim", {"agent_id": stranger.pk}, format="json").status_code == 404


@pytest.mark.parametrize("path, payload, field", [
    ("register", {"queues": ["a"]}, "name"),
    ("register", {"name": "x", "queues": []}, "queues"),
    ("claim", {"agent_id": "one"}, "agent_id"),
    ("claim", {"agent_id": 1, "max_runs": 100000}, "max_runs"),
    ("logs", {"logs": [{"message": "no run"}]}, "logs"),
])
def test_a_malformed_payload_is_400_naming_the_field(operator, prefix, path, payload, field, reporter):
    sender = reporter if path == "logs" else operator
    answer = sender.post(f"{prefix}/agent/{path}", payload, format="json")
    assert answer.status_code == 400
    assert field in answer.json()["error"]["fields"] and field in answer.json()["error"]["message"]


def test_an_unknown_state_is_400_naming_the_field(operator, prefix, ws, reporter):
    run = due_run(ws, state=State.RUNNING)
    answer = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": "DONE"}, format="json")
    assert answer.status_code == 400 and "state" in answer.json()["error"]["fields"]


def test_a_log_batch_over_the_size_limit_is_413_naming_the_limit(operator, prefix, ws, settings, reporter):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AGENT_LOG_BATCH_MAX_BYTES": 2000}
    run = due_run(ws, state=State.RUNNING)
    lines = [{"flow_run_id": str(run.pk), "message": "x" * 100} for _ in range(30)]
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": lines}, format="json")
    assert answer.status_code == 413
    assert "2000 bytes" in answer.json()["error"]["message"]
    assert not Log.objects.exists()


def test_a_log_batch_over_the_line_limit_is_400_naming_logs_and_the_limit(reporter, prefix, ws, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AGENT_LOG_BATCH_MAX_LINES": 5}
    run = due_run(ws, state=State.RUNNING)
    line = {"flow_run_id": str(run.pk), "message": ""}
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": [line] * 6}, format="json")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "logs" in error["fields"] and error["message"].startswith("logs: At most 5 lines per batch")
    assert not Log.objects.exists()
    assert reporter.post(f"{prefix}/agent/logs", {"logs": [line] * 5}, format="json").json()["stored"] == 5


def test_the_line_limit_is_judged_before_any_line_is(reporter, prefix, ws, monkeypatch):
    from runs.api import agents

    judged = []
    real = agents.valid_log_line

    def counting(raw):
        judged.append(1)
        return real(raw)

    monkeypatch.setattr(agents, "valid_log_line", counting)
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": [{}] * 1001}, format="json")  # the default limit: 1000
    assert answer.status_code == 400 and "1000" in answer.json()["error"]["message"]
    assert judged == []


def test_the_register_answer_says_how_many_lines_a_log_batch_may_carry(operator, prefix, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AGENT_LOG_BATCH_MAX_LINES": 250}
    answer = operator.post(f"{prefix}/agent/register", {"name": "box", "queues": ["q"]}, format="json").json()
    assert answer["log_batch_max_lines"] == 250


def test_the_register_answer_says_how_many_runs_a_claim_may_ask_for(operator, prefix, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AGENT_CLAIM_MAX_RUNS": 12}
    answer = operator.post(f"{prefix}/agent/register", {"name": "box", "queues": ["q"]}, format="json").json()
    assert answer["claim_max_runs"] == 12


@pytest.mark.parametrize("payload, field, says", [
    ({"queues": [f"q{i}" for i in range(101)]}, "queues", "At most 100 items"),
    ({"queues": ["q"], "labels": {f"k{i}": "v" for i in range(51)}}, "labels", "At most 50 keys"),
    ({"queues": ["q"], "labels": {"k" * 101: "v"}}, "labels", "at most 100 characters"),
    ({"queues": ["q"], "labels": {"os": "x" * 501}}, "labels", "at most 500 characters"),
    ({"queues": ["q"], "labels": {"os": {"nested": [1]}}}, "labels", "not an object"),
])
def test_a_registration_declaring_too_much_is_400_naming_the_field(operator, prefix, ws, payload, field, says):
    from runs.models import WorkQueue

    answer = operator.post(f"{prefix}/agent/register", {"name": "box", **payload}, format="json")
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert field in error["fields"] and says in error["message"]
    assert not Agent.objects.exists() and not WorkQueue.objects.filter(workspace=ws).exists()


def test_labels_may_be_strings_numbers_booleans_or_null(operator, prefix):
    labels = {"os": "linux", "cores": 2, "gpu": False, "rack": None}
    answer = operator.post(f"{prefix}/agent/register", {"name": "box", "queues": ["q"], "labels": labels},
                           format="json")
    assert answer.status_code == 201, answer.content
    assert Agent.objects.get(pk=answer.json()["id"]).labels == labels


# --- A run keeps what an earlier attempt completed ------------------------------------------

def rescheduled(run):
    """Lazarus moves the run back to SCHEDULED, another agent starts its next attempt."""
    from runs.states import set_flow_run_state

    run = set_flow_run_state(run, State.SCHEDULED, actor=Actor.LAZARUS,
                             updates={"start_time": None, "agent": None, "last_heartbeat": None})
    run = set_flow_run_state(run, State.SUBMITTED, actor=Actor.AGENT)
    return set_flow_run_state(run, State.RUNNING, actor=Actor.AGENT, now=timezone.now() + timedelta(seconds=5))


def completed_task(reporter, prefix, run, key, **result):
    url = f"{prefix}/agent/flow_runs/{run.pk}/task_runs"
    task_id = reporter.post(url, {"task_key": key}, format="json").json()["id"]
    reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "RUNNING"}, format="json")
    answer = reporter.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "COMPLETED", **result},
                           format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()


def test_a_completed_tasks_json_result_is_kept(operator, prefix, ws, reporter):
    run = due_run(ws, state=State.RUNNING)
    answer = completed_task(reporter, prefix, run, "extract", result={"rows": [1, 2], "ok": True})
    assert answer["state"] == "COMPLETED" and answer["result"] == {"value": {"rows": [1, 2], "ok": True}}
    assert TaskRun.objects.get(pk=answer["id"]).result == {"value": {"rows": [1, 2], "ok": True}}
    none = completed_task(reporter, prefix, run, "returns-none", result=None)
    assert none["result"] == {"value": None}  # None is a result too
    assert completed_task(reporter, prefix, run, "no-result")["result"] is None


def test_a_result_over_the_limit_is_not_kept(operator, prefix, ws, settings, reporter):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "TASK_RESULT_MAX_BYTES": 10}
    run = due_run(ws, state=State.RUNNING)
    assert completed_task(reporter, prefix, run, "small", result="12345678")["result"] == {"value": "12345678"}
    big = completed_task(reporter, prefix, run, "big", result="123456789")  # 11 bytes with its quotes
    assert big["state"] == "COMPLETED" and big["result"] is None


def test_a_later_attempt_gets_a_completed_task_with_its_result_instead_of_running_it(operator, prefix, ws, reporter):
    run = due_run(ws, state=State.RUNNING)
    first = completed_task(reporter, prefix, run, "extract", result=[1, 2, 3])
    rescheduled(run)
    again = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "extract"}, format="json")
    assert again.status_code == 200
    assert again.json() == {**first, "state": "COMPLETED", "result": {"value": [1, 2, 3]}}
    history = list(StateChange.objects.filter(task_run_id=first["id"]).values_list("to_state", flat=True))
    assert history == ["RUNNING", "COMPLETED"]  # not reopened


def test_a_later_attempt_reruns_a_completed_task_whose_result_was_not_kept_and_says_why(operator, prefix, ws, reporter):
    run = due_run(ws, state=State.RUNNING)
    first = completed_task(reporter, prefix, run, "to-dataframe")
    run = rescheduled(run)
    again = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "to-dataframe"},
                          format="json").json()
    assert (again["id"], again["state"], again["result"]) == (first["id"], "SCHEDULED", None)
    [line] = Log.objects.filter(task_run_id=first["id"]).values_list("message", flat=True)
    assert "ended COMPLETED in an earlier attempt without a result the server kept" in line


def test_the_register_answer_says_how_large_a_result_the_server_keeps(operator, prefix, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "TASK_RESULT_MAX_BYTES": 4096}
    answer = operator.post(f"{prefix}/agent/register", {"name": "box", "queues": ["q"]}, format="json").json()
    assert answer["task_result_max_bytes"] == 4096


# --- A claim whose answer was lost; cancellations in the poll answers ---------------------------

def test_a_claim_hands_out_again_what_this_agent_claimed_and_has_not_started(
        operator, prefix, ws, registered, reporter):
    run = due_run(ws)
    claim = lambda agent_id: operator.post(f"{prefix}/agent/claim", {"agent_id": agent_id, "max_runs": 5},  # noqa: E731
                                           format="json").json()["runs"]
    assert [r["id"] for r in claim(registered)] == [str(run.pk)]
    # The answer was lost: the next claim brings the run again, to this agent only.
    other = operator.post(f"{prefix}/agent/register", {"name": "box-2", "queues": ["default"]}, format="json")
    assert claim(other.json()["id"]) == []
    assert [(r["id"], r["state"]) for r in claim(registered)] == [(str(run.pk), "SUBMITTED")]
    # The same agent restarted (registered again under its name) gets it too.
    again = operator.post(f"{prefix}/agent/register", {"name": "box-1", "queues": ["default"]}, format="json")
    assert again.json()["id"] == registered and [r["id"] for r in claim(registered)] == [str(run.pk)]
    # Once started, it is no longer handed out; claiming never wrote a second history row.
    reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": "RUNNING"}, format="json")
    assert claim(registered) == []
    assert StateChange.objects.filter(flow_run=run, to_state=State.SUBMITTED).count() == 1


def test_handed_out_again_counts_against_max_runs(operator, prefix, ws, registered):
    runs = [due_run(ws) for _ in range(3)]
    claim = lambda n: operator.post(f"{prefix}/agent/claim", {"agent_id": registered, "max_runs": n},  # noqa: E731
                                    format="json").json()["runs"]
    assert len(claim(2)) == 2
    assert len(claim(2)) == 2  # the two unstarted ones again, nothing new
    assert {r["id"] for r in claim(3)} == {str(r.pk) for r in runs}


def test_the_poll_answers_name_the_agents_runs_being_cancelled(operator, prefix, ws, registered):
    mine = due_run(ws, state=State.CANCELLING, agent_id=registered)
    due_run(ws, state=State.CANCELLING, agent=factories.agent(ws))  # another agent's
    due_run(ws, state=State.RUNNING, agent_id=registered)
    claim = operator.post(f"{prefix}/agent/claim", {"agent_id": registered}, format="json").json()
    beat = operator.post(f"{prefix}/agent/heartbeat", {"agent_id": registered}, format="json").json()
    assert claim["cancelling"] == beat["cancelling"] == [str(mine.pk)]


def test_a_flow_run_heartbeat_answers_the_runs_state(operator, prefix, ws, reporter):
    run = due_run(ws, state=State.CANCELLING)
    assert reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat").json() == {"state": "CANCELLING"}
    run.refresh_from_db()
    assert run.last_heartbeat is not None


def test_a_run_handed_back_is_due_after_the_handback_delay_for_any_agent_and_starts_afresh(
        operator, prefix, ws, registered, reporter, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "HANDBACK_DELAY_SECONDS": 45}
    run = due_run(ws, state=State.RUNNING, agent_id=registered, last_heartbeat=timezone.now())
    before = timezone.now()
    answer = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state",
                           {"state": "SCHEDULED", "message": "Handed back by its runner"}, format="json")
    after = timezone.now()
    assert answer.status_code == 200 and answer.json()["state"] == "SCHEDULED"
    run.refresh_from_db()
    assert (run.agent, run.start_time, run.last_heartbeat) == (None, None, None)
    # Not due at once: the runner that handed it back may still be stopping its flow.
    assert before + timedelta(seconds=45) <= run.scheduled_start <= after + timedelta(seconds=45)
    claim = operator.post(f"{prefix}/agent/claim", {"agent_id": registered, "max_runs": 5}, format="json")
    assert claim.json()["runs"] == []


def test_registering_tells_the_agent_the_handback_delay(operator, prefix, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "HANDBACK_DELAY_SECONDS": 12}
    answer = operator.post(f"{prefix}/agent/register", {"name": "box", "queues": ["default"]}, format="json")
    assert answer.json()["handback_delay_seconds"] == 12


@pytest.mark.parametrize("delay, ok", [("3.5", False), ("4", True)])
def test_a_handback_delay_too_short_for_a_runners_handback_is_refused_at_settings_load(delay, ok):
    import os
    import subprocess
    import sys

    env = {**os.environ, "ORCHESTRATOR_HANDBACK_DELAY_SECONDS": delay, "DEBUG": "true"}
    loaded = subprocess.run([sys.executable, "-c", "import orchestrator.settings"], env=env, capture_output=True,
                            text=True)
    assert (loaded.returncode == 0) == ok, loaded.stderr
    if not ok:
        assert "ORCHESTRATOR_HANDBACK_DELAY_SECONDS must be at least 4" in loaded.stderr


# --- One bad log line does not cost its batch ---------------------------------------------------

def test_a_log_batch_stores_the_good_lines_and_names_the_refused_ones(operator, prefix, ws, other_ws, reporter,
                                                                     flush_logs):
    run, foreign = due_run(ws, state=State.RUNNING), due_run(other_ws, state=State.RUNNING)
    elsewhere = factories.task_run(due_run(ws, state=State.RUNNING))
    lines = [
        {"flow_run_id": str(run.pk), "message": "good"},
        {"flow_run_id": str(foreign.pk), "message": "another workspace's run"},
        {"flow_run_id": str(run.pk), "message": "bad level", "level": 25},
        {"flow_run_id": str(run.pk), "task_run_id": str(elsewhere.pk), "message": "another run's task"},
        "not a line",
        {"flow_run_id": str(run.pk), "message": "good too", "level": 40},
    ]
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": lines}, format="json")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["stored"] == 2 and [r["index"] for r in body["refused"]] == [1, 2, 3, 4]
    reasons = [r["reason"] for r in body["refused"]]
    assert reasons[0] == f"flow_run_id: this token reports for flow run {run.pk} only."
    assert reasons[1].startswith("level: ") and reasons[2].startswith("task_run_id: ")
    flush_logs()
    assert sorted(Log.objects.filter(flow_run=run).values_list("message", flat=True)) == ["good", "good too"]


def fails_with_a_nul():
    raise ValueError("bad byte \x00 in the input")


def test_what_the_agent_sends_is_stored_whatever_the_flow_printed_or_raised(prefix, ws, flush_logs):
    import json

    from agent.client import ApiError
    from agent.logs import LogShipper
    from agent.runner import Runner

    run = due_run(ws, state=State.RUNNING)
    runner_client = APIClient()
    runner_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_of(run)}")

    class ThroughTheApi:
        """The agent's client, with the test server: JSON as requests encodes it (\\u escapes)."""

        def post(self, path, payload=None, **kwargs):
            answer = runner_client.generic("POST", f"{prefix}/agent/{path}", json.dumps(payload),
                                      content_type="application/json")
            if answer.status_code >= 400:
                raise ApiError(answer.status_code, answer.json())
            return answer.json()

    shipper = LogShipper(ThroughTheApi())
    for message in ("binary \x00 output", "a file name \udcff", "plain"):
        shipper.add(str(run.pk), message)
    assert shipper.flush()
    flush_logs()
    assert Log.objects.filter(flow_run=run).count() == 3
    runner = Runner({"ORCHESTRATOR_FLOW_RUN_ID": str(run.pk), "ORCHESTRATOR_API_URL": "http://x",
                     "ORCHESTRATOR_RUN_TOKEN": "k", "ORCHESTRATOR_ENTRYPOINT": f"{__name__}:fails_with_a_nul"})
    state, message = runner._run_flow()
    assert ThroughTheApi().post(f"flow_runs/{run.pk}/state", {"state": state, "message": message})["state"] == "FAILED"
    assert "bad byte" in FlowRun.objects.get(pk=run.pk).state_message


def test_a_log_batch_with_nothing_to_store_is_400_or_404(operator, prefix, ws, other_ws, reporter):
    foreign = due_run(other_ws, state=State.RUNNING)
    malformed = reporter.post(f"{prefix}/agent/logs", {"logs": [{"message": "no run"}]}, format="json")
    assert malformed.status_code == 400 and "line 0: flow_run_id" in malformed.json()["error"]["message"]
    unknown = reporter.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(foreign.pk), "message": "x"}]},
                            format="json")
    assert unknown.status_code == 404
    assert not Log.objects.exists()


def test_a_poll_with_nothing_due_writes_nothing_once_its_queue_is_recorded_as_polled(operator, prefix, ws, registered,
                                                                                    django_assert_max_num_queries):
    poll = {"agent_id": registered, "max_runs": 10}
    assert operator.post(f"{prefix}/agent/claim", poll, format="json").json()["runs"] == []  # records the poll
    polled = WorkQueue.objects.get(workspace=ws, name="default").last_polled
    assert polled is not None
    # The agent; its SUBMITTED and CANCELLING runs; its queues with their last poll (recent: no
    # UPDATE, no transaction for it); the due runs, in a savepoint for the claim (none: nothing moves).
    with CaptureQueriesContext(connection) as captured, django_assert_max_num_queries(6):
        answer = operator.post(f"{prefix}/agent/claim", poll, format="json").json()
    assert answer == {"runs": [], "cancelling": [], "quota": None}
    statements = [q["sql"].split()[0] for q in captured.captured_queries]
    assert not {"UPDATE", "INSERT", "DELETE"} & set(statements), statements
    assert WorkQueue.objects.get(workspace=ws, name="default").last_polled == polled


def test_a_claim_takes_the_same_few_queries_for_three_runs_as_for_forty(operator, prefix, ws, registered,
                                                                        django_assert_max_num_queries):
    """Set-based: the claim's statements do not grow with the runs it hands out (issue 16)."""
    claim = {"agent_id": registered, "max_runs": 200}
    operator.post(f"{prefix}/agent/claim", claim, format="json")  # records the poll
    counts = []
    for size in (3, 40):
        for _ in range(size):
            due_run(ws)
        # On PostgreSQL the poll's snapshot (the agent, its queues and runs; it finds runs due) and the
        # claim's one statement, here in a savepoint of the test's transaction, with the events' buffer
        # rows in one of their own when there is no Redis. On SQLite the agent; its queues; its
        # SUBMITTED and CANCELLING runs; in one transaction the pick of the ids (locked) and their move
        # in its own savepoint (the locking read, the history, the UPDATE, the events' buffer rows);
        # the runs handed out.
        most = 7 if connection.vendor == "postgresql" else 13
        with CaptureQueriesContext(connection) as captured, django_assert_max_num_queries(most):
            answer = operator.post(f"{prefix}/agent/claim", claim, format="json").json()
        assert len(answer["runs"]) == size
        FlowRun.objects.filter(state=State.SUBMITTED).update(state=State.RUNNING)
        counts.append(len(captured.captured_queries))
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("body", [
    {"agent_id": 7}, {"agent_id": 7, "max_runs": 1}, {"agent_id": 7, "max_runs": 200}, {"agent_id": -3, "max_runs": 5},
    {"agent_id": 2 ** 70, "max_runs": 5}, {"agent_id": 7, "max_runs": 201}, {"agent_id": 7, "max_runs": 0},
    {"agent_id": True}, {"agent_id": 7, "max_runs": False}, {"agent_id": "7"}, {"agent_id": 7.0}, {"agent_id": None},
    {}, {"max_runs": 5}, {"agent_id": 7, "other": 1}, [7], "7", None])
def test_a_plain_claim_body_is_read_as_the_serializer_reads_it(body):
    """runs/api/agent_payloads.py plain_claim against ClaimInput: what it takes, it takes as the
    serializer would; what it leaves (None) goes to the serializer."""
    from runs.api.agent_payloads import ClaimInput, plain_claim

    serializer = ClaimInput(data=body)
    plain = plain_claim(body)
    if plain is not None:
        assert serializer.is_valid() and plain == dict(serializer.validated_data)
    assert (plain is not None) == (isinstance(body, dict) and body.keys() <= {"agent_id", "max_runs"}
                                   and serializer.is_valid() and type(body["agent_id"]) is int)
