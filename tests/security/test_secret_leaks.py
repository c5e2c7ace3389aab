"""Ways a workspace secret's value could get out: results, messages cut before redaction, multi-line values."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from agent import sdk
from agent.runner import Runner
from runs.models import Log, Role, State, TaskRun, WorkQueue
from tests import factories

# --- helpers -----------------------------------------------------------------------------------


def claimable(ws, secrets, entrypoint="m:f"):
    queue, _ = WorkQueue.objects.get_or_create(workspace=ws, name="default")
    flow = factories.flow(ws)
    flow.register_version(entrypoint=entrypoint, secrets=secrets)
    return factories.flow_run(flow, work_queue=queue, flow_version=flow.latest_version,
                              scheduled_start=timezone.now() - timedelta(seconds=1))


class Recorder:
    """Stands in for the agent's ApiClient: records every report, answers like the server."""

    def __init__(self):
        self.posts = []

    def post(self, path, payload=None, **kwargs):
        self.posts.append((path, payload))
        if path.endswith("/task_runs"):
            return {"id": "11111111-1111-1111-1111-111111111111", "state": "SCHEDULED", "result": None}
        return {"state": (payload or {}).get("state")}

    def sent(self):
        return repr(self.posts)


class NoBeats:
    def track(self, *a):
        pass

    def untrack(self, *a):
        pass


@pytest.fixture
def bound():
    """bound(secrets) -> the Recorder the SDK reports to, as under a runner with those secrets."""

    def bind(secrets):
        client = Recorder()
        sdk.bind(sdk.RunContext(client, "22222222-2222-2222-2222-222222222222", NoBeats(), secrets=secrets))
        return client

    yield bind
    sdk.bind(None)


# Secrets as people have them: generated passwords hold quotes and backslashes, key files newlines.
ESCAPED_BY_JSON = ['Pa"ss-w0rd-XYZ', "Pa\\ss-w0rd-XYZ", "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----"]


# --- HIGH: a task result holding a secret is kept when JSON escapes one of its characters -----------

@pytest.mark.parametrize("value", ESCAPED_BY_JSON)
def test_the_server_never_keeps_a_task_result_that_holds_a_secret(reporter, prefix, ws, value):
    """runs/api/agents.py kept_result: `secret in json.dumps(value)` misses a secret JSON escapes."""
    factories.secret(ws, name="DB_PASSWORD", value=value)
    run = claimable(ws, ["DB_PASSWORD"])
    run.state = State.RUNNING
    run.save()
    task = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "t"}, format="json").json()
    reporter.post(f"{prefix}/agent/task_runs/{task['id']}/state", {"state": "RUNNING"}, format="json")
    done = reporter.post(f"{prefix}/agent/task_runs/{task['id']}/state",
                         {"state": "COMPLETED", "result": {"password": value}}, format="json")
    assert done.status_code == 200, done.content
    assert TaskRun.objects.get(pk=task["id"]).result is None, "the secret is stored in the task run's result"


@pytest.mark.parametrize("value", ESCAPED_BY_JSON)
def test_the_sdk_never_sends_a_task_result_that_holds_a_secret(bound, value):
    """agent/sdk.py _report_completed: the same check on the encoded JSON."""
    client = bound([value])

    @sdk.task
    def connect():
        return {"dsn": f"postgres://app:{value}@db/app"}

    connect()
    [completed] = [payload for path, payload in client.posts if payload and payload.get("state") == "COMPLETED"]
    assert "result" not in completed, "the SDK sent the secret as the task's result"


# --- MEDIUM: a message cut at 10,000 characters before it is redacted keeps part of a secret ------

SECRET = "Zq7Kp2Wm9Lx4Rt8V"  # 16 characters; its first 8 alone are half the password


def test_a_task_failure_message_never_carries_part_of_a_secret(bound):
    """agent/sdk.py _run_reported: `storable(f"...{exc}")[:10000]` is cut before ctx.report redacts."""
    client = bound([SECRET])

    @sdk.task
    def login():
        prefix = "RuntimeError: "
        raise RuntimeError("x" * (10_000 - len(prefix) - 8) + SECRET + " refused")

    with pytest.raises(RuntimeError):
        login()
    assert SECRET[:8] not in client.sent(), "the first half of the secret was reported"


def failing_flow():
    raise RuntimeError("x" * (10_000 - len("RuntimeError: ") - 8) + SECRET + " refused")


def test_a_flow_failure_message_never_carries_part_of_a_secret(monkeypatch):
    """agent/runner.py _run_flow cuts the FAILED message at 10,000 characters; _end_run redacts after."""
    env = {"ORCHESTRATOR_FLOW_RUN_ID": "33333333-3333-3333-3333-333333333333",
           "ORCHESTRATOR_API_URL": "http://127.0.0.1:9/api/accounts/a/workspaces/w", "ORCHESTRATOR_RUN_TOKEN": "orr_x",
           "ORCHESTRATOR_ENTRYPOINT": f"{__name__}:failing_flow", "ORCHESTRATOR_SECRET_NAMES": "DB_PASSWORD",
           "DB_PASSWORD": SECRET, "ORCHESTRATOR_AGENT_PID": "1"}
    runner = Runner(env)
    client = Recorder()
    runner.client = client
    monkeypatch.setattr(runner.shipper, "stop", lambda **kw: True)
    state, message = runner._run_flow()
    assert state == "FAILED"
    runner._end_run(state, message)
    assert client.posts, "the runner reported nothing"
    assert SECRET[:8] not in client.sent(), "the first half of the secret was reported as the run's message"


# --- MEDIUM: a multi-line secret (a key file) printed by a flow is shipped one line at a time -------

def test_the_server_redacts_every_line_of_a_multi_line_secret(reporter, prefix, ws):
    """OutputCapture (agent/runner.py) ships what a flow prints line by line, and the server's
    LogBatchView redacts each line against the whole value: no line holds the whole key, so all
    of it is stored."""
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEF\nAASCBKcwggSjAgEAAoIBAQC7VJTU\n-----END PRIVATE KEY-----"
    factories.secret(ws, name="TLS_KEY", value=key)
    run = claimable(ws, ["TLS_KEY"])
    run.state = State.RUNNING
    run.save()
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(run.pk), "message": line}
                                                             for line in key.split("\n")]}, format="json")
    assert answer.status_code == 201, answer.content
    stored = "\n".join(Log.objects.values_list("message", flat=True))
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEF" not in stored, stored


def test_the_server_redacts_a_secret_that_ends_in_a_newline_when_printed(reporter, prefix, ws):
    """A value pasted from a file ends in a newline; print(value) ships it without (rstrip in
    OutputCapture._pump), and `value in line` never matches."""
    factories.secret(ws, name="DB_PASSWORD", value="hunter2-correct-horse\n")
    run = claimable(ws, ["DB_PASSWORD"])
    run.state = State.RUNNING
    run.save()
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": [
        {"flow_run_id": str(run.pk), "message": "password is hunter2-correct-horse"}]}, format="json")
    assert answer.status_code == 201, answer.content
    stored = "\n".join(Log.objects.values_list("message", flat=True))
    assert "hunter2-correct-horse" not in stored, stored


def test_the_runner_redacts_every_line_of_a_multi_line_secret_it_captures():
    """Agent side of the same: the runner's OutputCapture hands the shipper one line at a time."""
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEF\n-----END PRIVATE KEY-----"
    env = {"ORCHESTRATOR_FLOW_RUN_ID": "44444444-4444-4444-4444-444444444444",
           "ORCHESTRATOR_API_URL": "http://127.0.0.1:9/api/accounts/a/workspaces/w", "ORCHESTRATOR_RUN_TOKEN": "orr_x",
           "ORCHESTRATOR_ENTRYPOINT": "m:f", "ORCHESTRATOR_SECRET_NAMES": "TLS_KEY", "TLS_KEY": key,
           "ORCHESTRATOR_AGENT_PID": "1"}
    runner = Runner(env)
    for line in key.split("\n"):  # what OutputCapture._pump does with print(key)
        runner.capture.on_line(line, 20)
    shipped = "\n".join(line["message"] for line in runner.shipper.buffer)
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEF" not in shipped, shipped


# --- HIGH: an operator reads any secret's value through the agents' claim --------------------------

def test_an_operator_cannot_read_a_secrets_value_through_a_claim(ws, prefix):
    """Operators see secrets' names only (runs/api/secrets.py), yet an operator's own key may
    register as an agent, register a flow version naming any secret, run it and claim the run:
    the claim answer (runs/api/agents.py ClaimView/_claimed) carries the value."""
    factories.secret(ws, name="DB_PASSWORD", value="hunter2-correct-horse")
    person = factories.member(ws, role=Role.OPERATOR)
    secret = factories.api_key(ws, role=Role.OPERATOR, user=person)[1]
    operator = APIClient()
    operator.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert operator.get(f"{prefix}/secrets/").status_code == 200  # names: fine
    flow = factories.flow(ws)
    version = operator.post(f"{prefix}/flows/{flow.pk}/versions/", {"entrypoint": "m:f", "secrets": ["DB_PASSWORD"]},
                            format="json")
    assert version.status_code == 201, version.content
    WorkQueue.objects.get_or_create(workspace=ws, name="default")
    made = operator.post(f"{prefix}/flow_runs/", {"flow": flow.name}, format="json")
    assert made.status_code == 201, made.content
    agent = operator.post(f"{prefix}/agent/register", {"name": "my-laptop", "queues": ["default"]}, format="json")
    answer = operator.post(f"{prefix}/agent/claim", {"agent_id": agent.json().get("id"), "max_runs": 10},
                           format="json")
    assert "hunter2-correct-horse" not in answer.content.decode(), "an operator read the secret's value"


# --- LOW: the admin lists secrets (names, who wrote them) to viewers ------------------------------

def test_a_viewer_sees_nothing_of_secrets_in_the_admin(client, ws):
    """SecretAdmin inherits WorkspaceScopedAdmin's view permission, which is the viewer role's."""
    factories.secret(ws, name="PAYROLL_DB_PASSWORD", value="x")
    viewer = factories.member(ws, role=Role.VIEWER, is_staff=True)
    client.force_login(viewer)
    page = client.get("/admin/runs/secret/")
    assert page.status_code == 403 or "PAYROLL_DB_PASSWORD" not in page.content.decode()
