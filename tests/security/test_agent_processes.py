"""Secrets and the agent's key against a flow that looks for them, with a live server and real agent processes."""

import pytest

from runs.models import FlowRun, Log, Role, State
from tests import factories
from tests.agent.conftest import drain_logs, log_persister_running, start_agent, wait_for, workspace_url  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def finished(run_id):
    return FlowRun.objects.filter(pk=run_id, state__in=[State.COMPLETED, State.FAILED, State.CRASHED]).exists()


def test_a_flow_cannot_read_its_agents_key_from_the_agents_process(ws, workspace_url, start_agent, tmp_path):
    """agent/worker.py keeps ORCHESTRATOR_API_KEY out of the runner's environment, but the runner (and
    the flow) run as the agent's user and are told its pid: /proc/<pid>/environ holds the key."""
    queue = factories.work_queue(ws, name="e2e")
    flow = factories.flow(ws, entrypoint="tests.security.flows:reads_its_agents_environment")
    out = tmp_path / "agent-environ"
    run = factories.flow_run(flow, work_queue=queue, parameters={"path": str(out)})
    key = factories.api_key(ws, role=Role.AGENT)[1]
    agent = start_agent(workspace_url, key, "e2e", "keeper", env={"ORCHESTRATOR_API_KEY": key})
    wait_for(lambda: finished(run.pk), what=lambda: f"the run to finish\n{agent.output()}")
    assert out.exists(), agent.output()
    assert key not in out.read_text(), "the flow read the agent's API key from /proc/<agent pid>/environ"


def test_the_runners_flow_returned_line_never_holds_a_secret(ws, workspace_url, start_agent):
    """agent/runner.py logs `Flow returned %.500r`: repr() escapes a backslash (and quotes, newlines),
    so the shipper's redaction (value in text) misses it, and so does the server's."""
    value = "Pa\\ss-w0rd-Qx9"
    factories.secret(ws, name="DB_PASSWORD", value=value)
    queue = factories.work_queue(ws, name="e2e")
    flow = factories.flow(ws, entrypoint="tests.security.flows:returns_a_connection_config")
    flow.register_version(entrypoint="tests.security.flows:returns_a_connection_config", secrets=["DB_PASSWORD"])
    run = factories.flow_run(flow, work_queue=queue, flow_version=flow.latest_version)
    agent = start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "e2e", "returner")
    wait_for(lambda: finished(run.pk), what=lambda: f"the run to finish\n{agent.output()}")
    # The runner's last log batch may reach the server after its final state, and an accepted line
    # waits in the Redis stream for the log persister: wait for the line, then read what is stored.
    wait_for(lambda: "Flow returned" in stored_messages(run), timeout=15,
             what=lambda: f"the 'Flow returned' line\n{stored_messages(run)}\n{agent.output()}")
    messages = stored_messages(run)
    assert "w0rd-Qx9" not in messages, messages


def stored_messages(run):
    """The run's log lines as the server stored them, after storing every accepted line."""
    drain_logs()
    return "\n".join(Log.objects.filter(flow_run=run).values_list("message", flat=True))

