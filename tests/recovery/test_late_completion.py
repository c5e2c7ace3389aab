"""A recovery verdict that nobody acted on yet may be overturned by the original agent's COMPLETED."""

import pytest

from runs.models import Actor, State
from runs.states import IllegalTransition, set_flow_run_state, set_task_run_state
from services import lazarus, zombie_killer
from tests import factories
from tests.recovery.conftest import history

pytestmark = pytest.mark.django_db


@pytest.fixture
def zombie(flow, ws, ago):
    agent = factories.agent(ws, last_heartbeat=ago(7200))
    run = factories.flow_run(flow, State.RUNNING, start_time=ago(7200), last_heartbeat=ago(7200),
                             heartbeat_interval=30, agent=agent, state_changed=ago(7200))
    return run, factories.task_run(run, State.RUNNING, last_heartbeat=ago(7200), start_time=ago(7200))


def test_slow_agent_completes_a_task_the_zombie_killer_failed(zombie, now):
    run, task = zombie
    zombie_killer.run_once(now)
    task.refresh_from_db()
    set_task_run_state(task, State.COMPLETED, actor=Actor.AGENT, message="done")
    assert task.state == State.COMPLETED
    (_, _, killer, _), (old, new, actor, message) = history(run, task)
    assert (killer, old, new, actor) == (Actor.ZOMBIE_KILLER, State.FAILED, State.COMPLETED, Actor.AGENT)
    assert "Accepted a late COMPLETED" in message and "zombie-killer marked it FAILED" in message


def test_slow_agent_completes_a_flow_run_the_zombie_killer_crashed(zombie, now):
    run, _ = zombie
    zombie_killer.run_once(now)
    run.refresh_from_db()
    assert run.state == State.CRASHED
    set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    assert run.state == State.COMPLETED and "Accepted a late COMPLETED" in history(run)[-1][3]


def test_a_user_cannot_overturn_a_verdict_and_a_rescheduled_run_cannot_complete(zombie, flow, ago, now):
    run, task = zombie
    zombie_killer.run_once(now)
    task.refresh_from_db()
    with pytest.raises(IllegalTransition):
        set_task_run_state(task, State.COMPLETED, actor=Actor.USER)
    rescheduled = factories.flow_run(flow, State.SUBMITTED, state_changed=ago(3600))
    lazarus.run_once(now)
    rescheduled.refresh_from_db()
    assert rescheduled.state == State.SCHEDULED
    with pytest.raises(IllegalTransition):
        set_flow_run_state(rescheduled, State.COMPLETED, actor=Actor.AGENT)
