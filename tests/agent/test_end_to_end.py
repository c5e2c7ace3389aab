"""A real server (live_server), real agent subprocesses, real flows.

Polls are every 0.3 s and heartbeats every 0.3 s (set in conftest) so that these finish quickly.
"""

import json
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Agent, AgentStatus, FlowRun, Log, Role, State, StateChange, TaskRun
from runs.run_tokens import read_token
from runs.scheduling import schedule_future_runs
from tests import factories

from .conftest import drain_logs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def health(agent):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.health_port}/health", timeout=2) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except OSError:
        return None, None


def finished(run_ids):
    return FlowRun.objects.filter(pk__in=run_ids, state__in=[State.COMPLETED, State.FAILED, State.CRASHED]).count()


def test_a_scheduled_run_goes_through_the_agent_to_completed(ws, workspace_url, start_agent):
    queue = factories.work_queue(ws, name="e2e", job_env={"GREETING": "hi"})
    flow = factories.flow(ws, entrypoint="tests.agent.flows:steady")
    schedule = factories.schedule(flow, interval_seconds=2, work_queue=queue, parameters={"seconds": 1.2})
    schedule_future_runs([schedule], timezone.now(), count=1)
    [run] = FlowRun.objects.filter(schedule=schedule)
    assert run.state == State.SCHEDULED and run.work_queue == queue

    agent = start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "e2e", "e2e-agent")
    wait_for(lambda: finished([run.pk]), what=lambda: f"the run to finish\n{agent.output()}")
    assert health(agent)[0] == 200

    run.refresh_from_db()
    assert run.state == State.COMPLETED, agent.output()
    assert run.agent.name == "e2e-agent"
    history = list(StateChange.objects.filter(flow_run=run, task_run=None).values_list("from_state", "to_state"))
    assert history == [("SCHEDULED", "SUBMITTED"), ("SUBMITTED", "RUNNING"), ("RUNNING", "COMPLETED")]
    # Heartbeats: on by default, beating after the start.
    assert run.heartbeat_interval == 1
    assert run.last_heartbeat > run.start_time

    tasks = {t.task_key: t for t in TaskRun.objects.filter(flow_run=run)}
    assert set(tasks) == {"wait", "flaky", "shout"}
    assert all(t.state == State.COMPLETED for t in tasks.values())
    assert tasks["flaky"].run_count == 2 and tasks["flaky"].max_retries == 2
    assert tasks["wait"].last_heartbeat > tasks["wait"].start_time
    flaky_history = list(StateChange.objects.filter(task_run=tasks["flaky"]).values_list("to_state", flat=True))
    assert flaky_history == ["RUNNING", "SCHEDULED", "RUNNING", "COMPLETED"]

    drain_logs()
    messages = list(Log.objects.filter(flow_run=run).values_list("message", "level", "task_run_id"))
    assert any("waited 1.2, flaky took 2 attempts" in m for m, _, _ in messages)
    assert ("tests.flows: shouting done", 30, tasks["shout"].pk) in messages

    assert agent.stop() == 0
    assert Agent.objects.get(name="e2e-agent").status == AgentStatus.OFFLINE


def test_a_failing_flow_is_failed_with_its_traceback_in_the_logs(ws, workspace_url, start_agent):
    queue = factories.work_queue(ws, name="e2e")
    run = factories.flow_run(factories.flow(ws, entrypoint="tests.agent.flows:broken"), work_queue=queue)
    start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "e2e", "failing-agent")
    wait_for(lambda: finished([run.pk]), what="the broken run to finish")
    run.refresh_from_db()
    # Reported by the runner itself, with the exception as the message.
    assert (run.state, run.state_message) == (State.FAILED, "ValueError: this flow is broken on purpose")
    drain_logs()
    assert Log.objects.filter(flow_run=run, message__contains="this flow is broken on purpose").exists()


def test_sigterm_reports_unfinished_runs_crashed_and_the_agent_offline(ws, workspace_url, start_agent):
    queue = factories.work_queue(ws, name="e2e")
    run = factories.flow_run(factories.flow(ws, entrypoint="tests.agent.flows:forever"), work_queue=queue)
    agent = start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "e2e", "stopping-agent", "--grace-seconds", "0.5")
    wait_for(lambda: TaskRun.objects.filter(flow_run=run, state=State.RUNNING).exists(), what="the task to run")
    assert agent.stop(timeout=30) == 0
    run.refresh_from_db()
    assert run.state == State.CRASHED and "stopped before the run finished" in run.state_message
    assert Agent.objects.get(name="stopping-agent").status == AgentStatus.OFFLINE


def test_two_agents_on_one_queue_complete_every_run_exactly_once(ws, workspace_url, start_agent):
    queue = factories.work_queue(ws, name="shared")
    flow = factories.flow(ws, entrypoint="tests.agent.flows:noop")
    now = timezone.now()
    runs = [factories.flow_run(flow, work_queue=queue, scheduled_start=now - timedelta(seconds=i)) for i in range(24)]
    key = factories.api_key(ws, role=Role.AGENT)[1]
    start_agent(workspace_url, key, "shared", "agent-a", "--limit", "4")
    start_agent(workspace_url, key, "shared", "agent-b", "--limit", "4")
    ids = [r.pk for r in runs]
    wait_for(lambda: finished(ids) == len(ids), timeout=120, what="all runs to finish")
    assert FlowRun.objects.filter(pk__in=ids, state=State.COMPLETED).count() == len(ids)
    for to_state in (State.SUBMITTED, State.RUNNING, State.COMPLETED):
        assert StateChange.objects.filter(flow_run__in=ids, task_run=None, to_state=to_state).count() == len(ids)


def test_health_turns_503_when_the_server_cannot_be_reached(start_agent):
    from .conftest import free_port

    agent = start_agent(f"http://127.0.0.1:{free_port()}/api/accounts/a/workspaces/w", "orch_x", "q", "lonely")
    status = wait_for(lambda: health(agent)[0] == 503 and 503, timeout=20, what="/health to answer 503")
    assert status == 503


def test_an_agent_with_a_revoked_key_stops_with_an_error(ws, workspace_url, start_agent):
    key, secret = factories.api_key(ws, role=Role.AGENT)
    key.revoked_at = timezone.now()
    key.save()
    agent = start_agent(workspace_url, secret, "e2e", "revoked-agent")
    assert agent.process.wait(timeout=30) == 2
    assert "HTTP 401" in agent.output()
    assert not Agent.objects.filter(name="revoked-agent").exists()


def test_heartbeats_from_a_separate_process_reach_the_run_and_its_task(ws, workspace_url, start_agent):
    queue = factories.work_queue(ws, name="e2e")
    run = factories.flow_run(factories.flow(ws, entrypoint="tests.agent.flows:steady"), work_queue=queue,
                             parameters={"seconds": 1.5})
    start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "e2e", "process-beats", "--heartbeat-mode", "process")
    wait_for(lambda: finished([run.pk]), what="the run to finish")
    run.refresh_from_db()
    assert run.state == State.COMPLETED and run.last_heartbeat > run.start_time
    waited = TaskRun.objects.get(flow_run=run, task_key="wait")
    assert waited.last_heartbeat > waited.start_time


def test_heartbeat_mode_off_registers_the_run_without_an_interval(ws, workspace_url, start_agent):
    queue = factories.work_queue(ws, name="e2e")
    run = factories.flow_run(factories.flow(ws, entrypoint="tests.agent.flows:noop"), work_queue=queue)
    start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "e2e", "no-beats", "--heartbeat-mode", "off")
    wait_for(lambda: finished([run.pk]), what="the run to finish")
    run.refresh_from_db()
    assert run.state == State.COMPLETED and run.heartbeat_interval is None


def test_the_flow_gets_its_runs_token_and_never_the_agents_key(ws, workspace_url, start_agent, tmp_path):
    queue = factories.work_queue(ws, name="e2e")
    flow = factories.flow(ws, entrypoint="tests.agent.flows:what_the_flow_holds")
    out = tmp_path / "held.json"
    run = factories.flow_run(flow, work_queue=queue, parameters={"path": str(out)})
    key = factories.api_key(ws, role=Role.AGENT)[1]
    # The key on the command line and in the agent's environment, as `make run` and a service unit give it.
    agent = start_agent(workspace_url, key, "e2e", "keeper", env={"ORCHESTRATOR_API_KEY": key})
    wait_for(lambda: finished([run.pk]), what=lambda: f"the run to finish\n{agent.output()}")
    run.refresh_from_db()
    assert run.state == State.COMPLETED, agent.output()
    held = json.loads(out.read_text())
    assert held["api_key"] == [] and held["secrets"] == []
    assert held["run_token"].startswith("orr_") and read_token(held["run_token"]).run_id == run.pk


def test_a_secret_reaches_the_flow_and_nothing_the_server_keeps_or_shows_holds_it(
        ws, workspace_url, start_agent, tmp_path, client):
    from django.apps import apps

    value = "pa55-" + "x7Q" * 6
    factories.secret(ws, name="DB_PASSWORD", value=value)
    queue = factories.work_queue(ws, name="e2e")
    flow = factories.flow(ws, entrypoint="tests.agent.flows:leaks_its_secret")
    flow.register_version(entrypoint="tests.agent.flows:leaks_its_secret", secrets=["DB_PASSWORD"])
    got = tmp_path / "got"
    run = factories.flow_run(flow, work_queue=queue, flow_version=flow.latest_version, parameters={"path": str(got)})
    agent = start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "e2e", "careful")
    wait_for(lambda: finished([run.pk]), what=lambda: f"the run to finish\n{agent.output()}")
    run.refresh_from_db()
    assert got.read_text() == value  # the flow had it
    assert run.state == State.FAILED and run.state_message == "RuntimeError: login refused for password ***"
    drain_logs()
    messages = list(Log.objects.filter(flow_run=run).values_list("message", flat=True))
    assert any("stdout: connecting with ***" in m for m in messages), messages
    assert any("logged: connecting with ***" in m for m in messages), messages
    assert TaskRun.objects.get(flow_run=run, task_key="connect").result is None

    # Every row of every table, as text: the value appears nowhere.
    for model in apps.get_models():
        for row in model.objects.values_list():
            assert value not in repr(row), f"{model.__name__}: {row}"
    # Nor on any page about the run.
    staff = factories.member(ws, role=Role.ADMIN, is_staff=True)
    client.force_login(staff)
    for url in (f"/admin/runs/flowrun/{run.pk}/change/", "/admin/runs/log/", "/admin/events/event/",
                "/admin/runs/statechange/", f"/dashboard/runs/{run.pk}/"):
        page = client.get(url)
        assert page.status_code == 200 and value not in page.content.decode(), url
    assert value not in agent.output()
