"""A poll that finds nothing due and nothing to hand out again is answered from one query
(runs/api/agents.py quiet_poll, runs/hot_sql.py poll_snapshot: PostgreSQL) with exactly what the
claim would answer and do; a poll with work goes to the claim."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs.api import agents
from runs.models import Agent, AgentStatus, FlowRun, State, WorkQueue
from tests.agent.test_api import due_run, operator  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="the quiet poll is PostgreSQL's")


@pytest.fixture
def registered(operator, prefix):
    answer = operator.post(f"{prefix}/agent/register", {"name": "box-1", "queues": ["default", "gpu"]}, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()["id"]


@pytest.fixture
def quiet_answers(monkeypatch):
    """What quiet_poll answered on each poll (None: it left the poll to the claim)."""
    answers, original = [], agents.quiet_poll

    def spy(*args):
        answers.append(original(*args))
        return answers[-1]

    monkeypatch.setattr(agents, "quiet_poll", spy)
    return answers


def poll(operator, prefix, agent_id, max_runs=10):
    return operator.post(f"{prefix}/agent/claim", {"agent_id": agent_id, "max_runs": max_runs}, format="json")


def claim_answer(operator, prefix, agent_id, monkeypatch):
    """The claim's own answer to the same poll (the quiet poll closed)."""
    with monkeypatch.context() as patch:
        patch.setattr(agents, "quiet_poll", lambda *args: None)
        return poll(operator, prefix, agent_id).json()


def test_nothing_due_is_answered_quietly_as_the_claim_answers_it(operator, prefix, ws, registered, quiet_answers,
                                                                   monkeypatch):
    agent = Agent.objects.get(pk=registered)
    cancelling = [due_run(ws, state=State.CANCELLING, agent=agent) for _ in range(2)]
    due_run(ws, state=State.RUNNING, agent=agent)
    later = due_run(ws)
    FlowRun.objects.filter(pk=later.pk).update(scheduled_start=timezone.now() + timedelta(hours=1))  # not due yet
    answer = poll(operator, prefix, registered).json()
    assert quiet_answers[-1] is not None
    assert answer == claim_answer(operator, prefix, registered, monkeypatch)
    assert sorted(answer["cancelling"]) == sorted(str(run.pk) for run in cancelling)
    assert answer["runs"] == [] and answer["quota"] is None


def test_a_quiet_poll_records_the_poll_of_stale_queues_once(operator, prefix, ws, registered, quiet_answers,
                                                             flush_events):
    WorkQueue.objects.filter(workspace=ws).update(last_polled=None)
    before = timezone.now()
    assert poll(operator, prefix, registered).status_code == 200
    assert poll(operator, prefix, registered).status_code == 200
    assert quiet_answers[0] is not None and quiet_answers[1] is not None
    assert all(polled >= before for polled in WorkQueue.objects.filter(workspace=ws).values_list("last_polled",
                                                                                                 flat=True))
    polled = [e for e in flush_events() if e.name == "work-queue.polled"]
    assert sorted(e.resource["name"] for e in polled) == ["default", "gpu"]  # once per queue


def test_a_used_up_quota_is_in_the_quiet_answer(operator, prefix, ws, registered, quiet_answers, monkeypatch):
    type(ws).objects.filter(pk=ws.pk).update(monthly_task_run_quota=1)
    from runs import quota

    monkeypatch.setattr(quota, "used", lambda workspace_id, now: 1)
    from runs.api.key_cache import forget_everything

    forget_everything()  # the key's cached workspace holds the quota
    answer = poll(operator, prefix, registered).json()
    assert quiet_answers[-1] is not None
    assert answer["quota"]["code"] == "quota_reached"
    assert answer == claim_answer(operator, prefix, registered, monkeypatch)


@pytest.mark.parametrize("case", ["a due run", "a run to hand out again", "an offline agent"])
def test_a_poll_with_work_goes_to_the_claim(operator, prefix, ws, registered, quiet_answers, case):
    agent = Agent.objects.get(pk=registered)
    if case == "a due run":
        run = due_run(ws, queue_name="gpu")
    elif case == "a run to hand out again":
        run = due_run(ws, state=State.SUBMITTED, agent=agent)
    else:
        Agent.objects.filter(pk=registered).update(status=AgentStatus.OFFLINE)
        run = None
    answer = poll(operator, prefix, registered).json()
    assert quiet_answers == [None]
    if run is not None:
        assert [r["id"] for r in answer["runs"]] == [str(run.pk)]
        assert FlowRun.objects.get(pk=run.pk).state == State.SUBMITTED
    else:
        assert Agent.objects.get(pk=registered).status == AgentStatus.ONLINE


def test_due_runs_of_a_paused_queue_or_another_workspace_leave_the_poll_quiet(operator, prefix, ws, other_ws,
                                                                               registered, quiet_answers):
    WorkQueue.objects.filter(workspace=ws, name="gpu").update(paused=True)
    waiting = due_run(ws, queue_name="gpu")
    due_run(other_ws)
    assert poll(operator, prefix, registered).json()["runs"] == []
    assert quiet_answers[-1] is not None
    assert FlowRun.objects.get(pk=waiting.pk).state == State.SCHEDULED


def test_an_unknown_agent_is_the_claim_s_404(operator, prefix, other_ws, quiet_answers):
    stranger = Agent.objects.create(workspace=other_ws, name="stranger")
    answer = poll(operator, prefix, stranger.pk)
    assert (answer.status_code, answer.json()["error"]) == (
        404, {"code": "not_found", "message": "No Agent matches the given query.", "fields": {}})
    assert quiet_answers == []  # the poll's one query found no such agent: nothing left to answer quietly


def test_a_quiet_poll_is_one_query(operator, prefix, ws, registered):
    assert poll(operator, prefix, registered).status_code == 200  # records the poll of its queues
    with CaptureQueriesContext(connection) as captured:
        assert poll(operator, prefix, registered).json() == {"runs": [], "cancelling": [], "quota": None}
    assert len(captured.captured_queries) == 1, [q["sql"][:80] for q in captured.captured_queries]
