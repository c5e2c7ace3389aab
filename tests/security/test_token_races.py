"""A superseded attempt's report is refused even when the run moves between the check of its token
and the write (the generation is a condition of the UPDATE itself), and a finished run's token starts
no more task runs."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

import runs.api.agents as agents_api
from runs.models import Actor, FlowRun, State, TaskRun
from runs.run_tokens import token_of
from runs.states import set_flow_run_state
from tests import factories
from tests.agent.test_api import due_run, operator, registered  # noqa: F401 - fixtures


def holding(token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def new_attempt_takes_over(run_id, agent_id):
    """What happens elsewhere in the window: Lazarus reschedules the run, another agent claims it
    and its runner starts it (all through runs/states.py, so token_generation moves twice)."""
    run = FlowRun.objects.get(pk=run_id)
    past = timezone.now() - timedelta(seconds=1)
    run = set_flow_run_state(run, State.SCHEDULED, actor=Actor.LAZARUS,
                             updates={"start_time": None, "agent": None, "last_heartbeat": None,
                                      "scheduled_start": past})
    run = set_flow_run_state(run, State.SUBMITTED, actor=Actor.AGENT, updates={"agent_id": agent_id})
    return set_flow_run_state(run, State.RUNNING, actor=Actor.AGENT)


@pytest.fixture
def running_attempt(operator, prefix, ws, registered):  # noqa: F811
    run = due_run(ws)
    answer = operator.post(f"{prefix}/agent/claim", {"agent_id": registered, "max_runs": 1}, format="json")
    [claimed] = answer.json()["runs"]
    old = holding(claimed["token"])
    assert old.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": "RUNNING"}, format="json").status_code == 200
    return run, old, registered


def in_the_window(monkeypatch, action):
    """Run `action` once between the view's generation check (fenced_run) and its state change:
    secrets_in() is called exactly there by FlowRunStateView and TaskRunStateView."""
    real, done = agents_api.secrets_in, []

    def hooked(run):
        if not done:
            done.append(action())
        return real(run)

    monkeypatch.setattr(agents_api, "secrets_in", hooked)
    return done


def test_a_superseded_attempts_completed_is_refused_even_if_the_new_attempt_started_meanwhile(
        running_attempt, prefix, monkeypatch):
    run, old, agent_id = running_attempt
    in_the_window(monkeypatch, lambda: new_attempt_takes_over(run.pk, agent_id))
    answer = old.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": "COMPLETED"}, format="json")
    run.refresh_from_db()
    # The new attempt is RUNNING with generation +2; the old runner's COMPLETED must not end it.
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "superseded", answer.content
    assert run.state == State.RUNNING


def test_a_superseded_attempts_task_result_is_refused_even_if_the_new_attempt_started_meanwhile(
        running_attempt, prefix, monkeypatch):
    run, old, agent_id = running_attempt
    task = old.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "charge-card"}, format="json").json()
    assert old.post(f"{prefix}/agent/task_runs/{task['id']}/state", {"state": "RUNNING"},
                    format="json").status_code == 200
    in_the_window(monkeypatch, lambda: new_attempt_takes_over(run.pk, agent_id))
    answer = old.post(f"{prefix}/agent/task_runs/{task['id']}/state", {"state": "COMPLETED", "result": 1},
                      format="json")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "superseded", answer.content
    assert TaskRun.objects.get(pk=task["id"]).state == State.RUNNING


def test_a_cancelled_runs_token_no_longer_creates_or_completes_task_runs(running_attempt, prefix):
    """A user cancels the run; the agent (or the cancellation cleanup) ends it CANCELLED. The token of
    that attempt stays valid (CANCELLED does not move the generation) and nothing checks the run's
    state: a runner that did not stop still creates task runs in the finished run and completes them."""
    run, old, _ = running_attempt
    run.refresh_from_db()
    run = set_flow_run_state(run, State.CANCELLING, actor=Actor.USER)
    run = set_flow_run_state(run, State.CANCELLED, actor=Actor.CANCELLATION_CLEANUP)
    answer = old.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "after-the-end"}, format="json")
    assert answer.status_code == 409, answer.content
    assert not TaskRun.objects.filter(flow_run=run).exists()
