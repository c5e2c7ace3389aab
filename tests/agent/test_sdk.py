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
    """Stands in for the server: answers task-run creation and records every report.

    `stored` maps a task run id to the result an earlier attempt left (it then answers COMPLETED).
    """

    def __init__(self, refuse=None, stored=None):
        self.calls = []
        self.refuse = refuse
        self.stored = stored or {}

    def post(self, path, payload=None, **kwargs):
        self.calls.append((path, payload))
        if self.refuse and self.refuse(path, payload):
            raise ApiError(409, {"error": {"message": "refused"}})
        if path.endswith("/task_runs"):
            task_run_id = f"{payload['task_key']}-{payload['dynamic_key']}"
            if task_run_id in self.stored:
                return {"id": task_run_id, "state": "COMPLETED", "result": {"value": self.stored[task_run_id]}}
            return {"id": task_run_id, "state": "SCHEDULED", "result": None}
        return {"state": payload.get("state")} if payload else None

    def reports(self):
        return [(path, payload) for path, payload in self.calls if path.endswith("/state")]


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


@task(retries=1)
def explode_with_a_nul():
    raise ValueError("bad byte \x00")


def test_a_failed_tasks_message_has_no_character_the_server_refuses(reported):
    with pytest.raises(ValueError):
        explode_with_a_nul()
    messages = [payload["message"] for path, payload in reported.reports() if payload["state"] != "RUNNING"]
    assert [m.startswith(("Attempt 1 failed", "ValueError: bad byte")) for m in messages] == [True, True]
    assert not any("\x00" in message for message in messages)


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


# --- Results: what a later attempt of the flow run gets back --------------------------------

def test_a_completed_task_sends_its_json_result(reported):
    assert double(21) == 42
    assert reported.reports()[-1] == ("task_runs/double-0/state", {"state": "COMPLETED", "result": 42})


@task
def as_tuple():
    return (1, 2)


@task
def as_object():
    return object()


@task
def as_text(size):
    return "x" * size


def test_a_result_json_cannot_hold_exactly_is_not_sent_and_the_logs_say_so(reported, caplog):
    with caplog.at_level("INFO", logger="agent.tasks"):
        assert as_tuple() == (1, 2)  # a tuple would come back a list
        as_object()
    assert [payload for _, payload in reported.reports() if payload["state"] == "COMPLETED"] == [
        {"state": "COMPLETED"}, {"state": "COMPLETED"}]
    assert "Task as_tuple returned a tuple, which JSON cannot hold as it is" in caplog.text
    assert "Task as_object returned a object" in caplog.text


def test_a_result_larger_than_the_server_keeps_is_not_sent(caplog):
    client = RecordingClient()
    sdk.bind(sdk.RunContext(client, "run-1", NoHeartbeats(), result_max_bytes=12))
    try:
        with caplog.at_level("INFO", logger="agent.tasks"):
            as_text(10)  # 12 bytes with its quotes: kept
            as_text(11)
    finally:
        sdk.bind(None)
    assert [payload.get("result") for _, payload in client.reports() if payload["state"] == "COMPLETED"] == [
        "x" * 10, None]
    assert "Task as_text returned 13 bytes of JSON, more than the 12 the server keeps" in caplog.text


@task
def counted(x):
    calls["counted"] = calls.get("counted", 0) + 1
    return x * 10


def test_a_task_completed_in_an_earlier_attempt_returns_its_stored_result_without_running(caplog):
    client = RecordingClient(stored={"counted-0": 70})
    sdk.bind(sdk.RunContext(client, "run-1", NoHeartbeats()))
    calls["counted"] = 0
    try:
        with caplog.at_level("INFO", logger="agent.tasks"):
            assert counted(7) == 70  # stored
            assert counted(8) == 80  # the second call (dynamic key 1) was not completed: it runs
    finally:
        sdk.bind(None)
    assert calls["counted"] == 1
    assert client.reports() == [("task_runs/counted-1/state", {"state": "RUNNING", "message": "Attempt 1 of 1."}),
                                ("task_runs/counted-1/state", {"state": "COMPLETED", "result": 80})]
    assert "Task counted completed in an earlier attempt; its result stands." in caplog.text


@task
def interrupted():
    raise sdk.FlowRunStopped()


def test_a_task_stopped_from_outside_ends_as_the_runner_says_and_the_stop_goes_on():
    client = RecordingClient()
    sdk.bind(sdk.RunContext(client, "run-1", NoHeartbeats(),
                            why_stopped=lambda: ("CANCELLED", "Cancelled: its flow run was cancelled.")))
    try:
        with pytest.raises(sdk.FlowRunStopped):
            interrupted()
    finally:
        sdk.bind(None)
    assert client.reports()[-1] == ("task_runs/interrupted-0/state",
                                    {"state": "CANCELLED", "message": "Cancelled: its flow run was cancelled."})
    assert not issubclass(sdk.FlowRunStopped, Exception)  # `except Exception` in a flow does not swallow it
