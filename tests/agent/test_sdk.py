"""The flow SDK and the agent's pieces that need no server: plain runs, reporting, the log buffer."""

import pytest

from agent import flow, task
from agent import sdk
from agent.client import ApiClient, ApiError, ServerUnreachable
from agent.heartbeats import NoHeartbeats
from agent.logs import LogShipper
from agent.runner import load_entrypoint

from .conftest import free_port


class RecordingClient:
    """Stands in for the server: answers task-run creation and records every report."""

    def __init__(self, refuse=None):
        self.calls = []
        self.refuse = refuse

    def post(self, path, payload=None, **kwargs):
        self.calls.append((path, payload))
        if self.refuse and self.refuse(path, payload):
            raise ApiError(409, {"error": {"message": "refused"}})
        if path.endswith("/task_runs"):
            return {"id": f"{payload['task_key']}-{payload['dynamic_key']}", "state": "SCHEDULED"}
        return {"state": payload.get("state")} if payload else None


@pytest.fixture
def reported():
    client = RecordingClient()
    sdk.bind(sdk.RunContext(client, "run-1", NoHeartbeats()))
    yield client
    sdk.bind(None)


calls = {"flaky": 0}


@task(retries=2)
def flaky():
    calls["flaky"] += 1
    if calls["flaky"] < 2:
        raise RuntimeError("not yet")
    return "ok"


@task
def double(x):
    return 2 * x


@task
def explode():
    raise ValueError("boom")


@flow
def pipeline(x):
    return double(double(x))


def test_a_flow_runs_plainly_without_an_agent():
    calls["flaky"] = 0
    assert pipeline(3) == 12
    assert flaky() == "ok" and calls["flaky"] == 2


def test_under_the_agent_each_task_call_is_a_task_run_with_its_own_dynamic_key(reported):
    assert pipeline(3) == 12
    created = [payload for path, payload in reported.calls if path.endswith("/task_runs")]
    assert [(c["task_key"], c["dynamic_key"]) for c in created] == [("double", "0"), ("double", "1")]
    states = [(path, payload["state"]) for path, payload in reported.calls if path.endswith("/state")]
    assert states == [("task_runs/double-0/state", "RUNNING"), ("task_runs/double-0/state", "COMPLETED"),
                      ("task_runs/double-1/state", "RUNNING"), ("task_runs/double-1/state", "COMPLETED")]


def test_a_retried_task_goes_back_to_scheduled_between_attempts(reported):
    calls["flaky"] = 0
    assert flaky() == "ok"
    states = [payload["state"] for path, payload in reported.calls if path.endswith("/state")]
    assert states == ["RUNNING", "SCHEDULED", "RUNNING", "COMPLETED"]
    assert reported.calls[0][1]["max_retries"] == 2


def test_a_task_out_of_retries_is_failed_and_raises(reported):
    with pytest.raises(ValueError):
        explode()
    last_path, last = reported.calls[-1]
    assert last["state"] == "FAILED" and "boom" in last["message"]


def test_entrypoints_are_module_colon_function():
    assert load_entrypoint("agent.examples.hello:hello").flow_name == "hello-orchestrator"
    with pytest.raises(ValueError):
        load_entrypoint("agent.examples.hello")


def test_the_demo_flow_runs_plainly():
    from agent.examples.hello import hello

    assert hello("Ada") == {"greeting": "Hello, Ada!", "letters": 8}


def test_the_log_buffer_is_bounded_and_says_what_it_dropped():
    unreachable = ApiClient(f"http://127.0.0.1:{free_port()}/api/accounts/a/workspaces/w", "k", timeout=1)
    shipper = LogShipper(unreachable, capacity=5)
    for i in range(8):
        shipper.add("run-1", f"line {i}")
    assert not shipper.flush()
    assert [line["message"] for line in shipper.buffer] == [f"line {i}" for i in range(3, 8)]
    assert shipper.dropped == {"run-1": 3}

    delivered = RecordingClient()
    shipper.client = delivered
    assert shipper.flush()
    [(path, payload)] = delivered.calls
    messages = [line["message"] for line in payload["logs"]]
    assert messages[0].startswith("The agent dropped 3 log line(s)")
    assert messages[1:] == [f"line {i}" for i in range(3, 8)]


def test_the_client_gives_up_after_its_retry_window_when_the_server_is_away():
    client = ApiClient(f"http://127.0.0.1:{free_port()}/api/accounts/a/workspaces/w", "k", timeout=1)
    with pytest.raises(ServerUnreachable):
        client.post("heartbeat", {"agent_id": 1}, retry_for=0.5)
