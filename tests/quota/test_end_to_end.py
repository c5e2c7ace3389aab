"""A real agent against a live server: a run's task runs count once each (a retried task too), the
next run waits once the quota is used, the agent says why once and keeps polling, and a raised
quota lets the run through."""

import time

import pytest

from runs import quota
from runs.models import FlowRun, Role, State
from tests import factories
from tests.agent.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def state_of(run):
    return FlowRun.objects.get(pk=run.pk).state


def test_a_used_quota_holds_the_next_run_until_it_is_raised(ws, workspace_url, start_agent):
    ws.monthly_task_run_quota = 3
    ws.save()
    queue = factories.work_queue(ws, name="quota")
    flow = factories.flow(ws, entrypoint="tests.agent.flows:steady")
    first = factories.flow_run(flow, work_queue=queue, parameters={"seconds": 0.3})
    agent = start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "quota", "quota-agent")
    wait_for(lambda: state_of(first) == State.COMPLETED, what=lambda: f"the first run\n{agent.output()}")
    # wait, flaky (two attempts) and shout: three task runs, each counted once.
    assert quota.used(ws.pk, first.scheduled_start) == 3

    second = factories.flow_run(flow, work_queue=queue, parameters={"seconds": 0.3})
    wait_for(lambda: "monthly task-run quota" in agent.output(), what=lambda: f"the refusal\n{agent.output()}")
    time.sleep(2)  # several more polls (every 0.3 s), each refused
    assert state_of(second) == State.SCHEDULED
    assert agent.output().count("No new runs are claimed") == 1, agent.output()
    assert "3 of 3 successful task runs" in agent.output()

    ws.monthly_task_run_quota = 10
    ws.save()  # the live server's process forgets its verified keys: the next claim sees the new quota
    wait_for(lambda: state_of(second) == State.COMPLETED, what=lambda: f"the second run\n{agent.output()}")
    assert "allows claims again" in agent.output()
    assert quota.used(ws.pk, second.scheduled_start) == 6
    assert agent.stop() == 0
