"""A superseded runner stops its flow in every heartbeat mode (a live server and real agents)."""

import pytest

from runs.models import FlowRun, Role, State
from tests import factories
from tests.agent.conftest import log_persister_running, start_agent, wait_for, workspace_url  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_superseded_runner_stops_its_flow_in_every_heartbeat_mode(ws, workspace_url, start_agent, mode):
    """The run is rescheduled under a running runner (its queue paused, so nobody claims it again):
    its next heartbeat is refused `superseded`, and the runner must stop the flow and exit, in mode
    `process` told by its heartbeat process (through a pipe)."""
    from runs.models import Actor
    from runs.states import set_flow_run_state
    from tests.agent.conftest import alive, runner_pids

    queue = factories.work_queue(ws, name="e2e")
    flow = factories.flow(ws, entrypoint="tests.agent.flows:forever")
    run = factories.flow_run(flow, work_queue=queue)
    agent = start_agent(workspace_url, factories.api_key(ws, role=Role.AGENT)[1], "e2e", f"beats-{mode}", "--heartbeat-mode", mode)
    wait_for(lambda: FlowRun.objects.filter(pk=run.pk, state=State.RUNNING).exists(),
             what=lambda: f"the run to start\n{agent.output()}")
    def the_runner():  # in mode process its heartbeat process (a fork) runs `agent.runner` too
        for pid in runner_pids(agent.process.pid):
            with open(f"/proc/{pid}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == agent.process.pid:
                    return pid
        return None

    runner = wait_for(the_runner, what="the runner")
    queue.paused = True
    queue.save()
    run.refresh_from_db()
    set_flow_run_state(run, State.SCHEDULED, actor=Actor.LAZARUS, updates={"agent": None, "start_time": None})
    wait_for(lambda: not alive(runner), timeout=30, what=lambda: f"the superseded runner to stop\n{agent.output()}")
    run.refresh_from_db()
    assert run.state == State.SCHEDULED, run.state_message
