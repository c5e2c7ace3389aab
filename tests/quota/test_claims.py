"""Claims once a workspace has used its quota: a clear answer, the runs wait, and claiming resumes
when the month rolls over or an admin raises the quota."""

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from runs import quota
from runs.claiming import claim_for_agent
from runs.models import Actor, FlowRun, Role, State, TaskRunUsage
from runs.states import set_flow_run_state, set_task_run_state
from tests import factories
from tests.conftest import api_prefix

pytestmark = pytest.mark.django_db
UTC = dt_timezone.utc


@pytest.fixture
def queue(ws):
    return factories.work_queue(ws)


@pytest.fixture
def agent(ws, queue):
    agent = factories.agent(ws)
    agent.queues.set([queue])
    return agent


def use(ws, count, now):
    """`count` task runs of `ws` COMPLETED at `now`, as agents report them."""
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    for _ in range(count):
        set_task_run_state(factories.task_run(run), State.COMPLETED, actor=Actor.AGENT, now=now)
    return run


def claim(client, ws, agent):
    answer = client.post(f"{api_prefix(ws)}/agent/claim", {"agent_id": agent.pk, "max_runs": 10}, format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()


@pytest.fixture
def frozen(monkeypatch):
    """freeze(when): the server's clock (django.utils.timezone.now) reads `when` from now on."""
    def freeze(when):
        monkeypatch.setattr("django.utils.timezone.now", lambda: when)
    return freeze


def test_without_a_quota_claims_say_nothing_and_read_no_usage(ws, flow, queue, agent, agent_client):
    run = factories.flow_run(flow, work_queue=queue)
    use(ws, 3, quota.resets_at(run.scheduled_start) - timedelta(days=1))
    with CaptureQueriesContext(connection) as captured:
        answer = claim(agent_client, ws, agent)
    assert answer["quota"] is None
    assert [r["id"] for r in answer["runs"]] == [str(run.pk)]
    assert not any(TaskRunUsage._meta.db_table in q["sql"] for q in captured)


def test_a_reached_quota_answers_with_what_who_and_when_and_the_runs_wait(ws, flow, queue, agent, agent_client,
                                                                          frozen, now):
    frozen(now)
    ws.monthly_task_run_quota = 3
    ws.save()
    use(ws, 3, now)
    scheduled = factories.flow_run(flow, work_queue=queue, scheduled_start=now - timedelta(seconds=5))
    late = factories.flow_run(flow, State.LATE, work_queue=queue, scheduled_start=now - timedelta(minutes=5))
    answer = claim(agent_client, ws, agent)
    assert answer["runs"] == []
    refusal = answer["quota"]
    assert refusal["code"] == "quota_reached"
    assert (refusal["limit"], refusal["used"], refusal["month"]) == (3, 3, "2026-12")
    assert refusal["resets_at"] == "2027-01-01T00:00:00Z"
    assert "admin" in refusal["raised_by"]
    for words in ("3 of 3 successful task runs", "December 2026", "2027-01-01 00:00 UTC", "workspace admin raises",
                  "monthly_task_run_quota", f"{ws.account.slug}/{ws.slug}"):
        assert words in refusal["message"]
    assert FlowRun.objects.get(pk=scheduled.pk).state == State.SCHEDULED
    assert FlowRun.objects.get(pk=late.pk).state == State.LATE
    assert FlowRun.objects.get(pk=late.pk).agent_id is None


def test_runs_claimed_before_the_quota_was_reached_still_come_and_running_ones_finish_and_count(
        ws, flow, queue, agent, agent_client, frozen, now):
    frozen(now)
    ws.monthly_task_run_quota = 2
    ws.save()
    claimed = factories.flow_run(flow, work_queue=queue, scheduled_start=now - timedelta(minutes=1))
    assert [r.pk for r in claim_for_agent(agent, limit=5, now=now).runs] == [claimed.pk]
    running = use(ws, 2, now)  # the quota is reached now
    answer = claim(agent_client, ws, agent)
    assert answer["quota"] is not None
    assert [r["id"] for r in answer["runs"]] == [str(claimed.pk)]  # handed out again, as before
    # A run already running completes its task runs and itself; they count past the quota.
    set_task_run_state(factories.task_run(running), State.COMPLETED, actor=Actor.AGENT, now=now)
    set_flow_run_state(running, State.COMPLETED, actor=Actor.AGENT, now=now)
    assert quota.used(ws.pk, now) == 3
    assert FlowRun.objects.get(pk=running.pk).state == State.COMPLETED


def test_claims_resume_when_the_month_rolls_over(ws, flow, queue, agent, agent_client, frozen):
    december = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    frozen(december)
    ws.monthly_task_run_quota = 1
    ws.save()
    use(ws, 1, december)
    waiting = factories.flow_run(flow, work_queue=queue, scheduled_start=december - timedelta(seconds=1))
    assert claim(agent_client, ws, agent)["quota"]["resets_at"] == "2027-01-01T00:00:00Z"
    assert FlowRun.objects.get(pk=waiting.pk).state == State.SCHEDULED
    frozen(datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC))
    answer = claim(agent_client, ws, agent)
    assert answer["quota"] is None
    assert [r["id"] for r in answer["runs"]] == [str(waiting.pk)]
    assert FlowRun.objects.get(pk=waiting.pk).state == State.SUBMITTED


def test_claims_resume_at_once_when_an_admin_raises_the_quota(ws, flow, queue, agent, agent_client, key_for, frozen,
                                                              now):
    frozen(now)
    ws.monthly_task_run_quota = 2
    ws.save()
    use(ws, 2, now)
    waiting = factories.flow_run(flow, work_queue=queue, scheduled_start=now - timedelta(seconds=1))
    assert claim(agent_client, ws, agent)["quota"]["used"] == 2
    admin = APIClient()
    admin.credentials(HTTP_AUTHORIZATION=f"Bearer {key_for(Role.ADMIN)}")
    assert admin.patch(f"{api_prefix(ws)}/settings", {"monthly_task_run_quota": 3},
                       format="json").status_code == 200
    answer = claim(agent_client, ws, agent)
    assert answer["quota"] is None
    assert [r["id"] for r in answer["runs"]] == [str(waiting.pk)]


def test_with_a_quota_a_claim_costs_one_query_more(ws, flow, queue, agent, agent_client, now, frozen):
    """The poll's price of a quota: one read of the month's few counter rows."""
    frozen(now)
    factories.flow_run(flow, work_queue=queue, scheduled_start=now + timedelta(hours=1))  # nothing due
    claim(agent_client, ws, agent)  # warm: the queue's poll is recorded, the key verified

    def cost():
        with CaptureQueriesContext(connection) as captured:
            claim(agent_client, ws, agent)
        return len(captured)

    without = cost()
    ws.monthly_task_run_quota = 100
    ws.save()
    claim(agent_client, ws, agent)  # the saved workspace made this process forget its verified key
    assert cost() == without + 1
