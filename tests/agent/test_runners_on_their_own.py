"""Runners report for themselves: real agent and runner processes, a live server, real signals.

- the agent dies (SIGKILL) and its runner finishes the run, reports it and ships its logs;
- with heartbeats off, an orphaned runner stops and hands the run back instead;
- a cancelled run's process is ended, by its agent or (orphaned) by itself, and the run is CANCELLED;
- a runner whose heartbeat process is killed beats from a thread instead, and its run completes.

Markers in files count how often each task ran; polls and beats are every 0.3 s (conftest).
"""

import json
import os
import time
from datetime import timedelta

import pytest

from runs.models import TERMINAL_STATES, Actor, FlowRun, Log, Role, State, StateChange, TaskRun
from tests import factories

from .conftest import alive, drain_logs, process_tree, runner_pids, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ORPHAN_WARNING = "is gone; this runner finishes the run and reports for itself"


@pytest.fixture
def operator_key(ws):
    """The agents' key (the agent role; the fixture keeps the name it had when agents held operator keys)."""
    return factories.api_key(ws, role=Role.AGENT)[1]


def queued_run(ws, entrypoint, **parameters):
    queue = factories.work_queue(ws, name="faults")
    return factories.flow_run(factories.flow(ws, entrypoint=entrypoint), work_queue=queue, parameters=parameters)


def executions(marks, name):
    path = marks / name
    return path.read_text().split() if path.exists() else []


def the_runner_of(agent):
    return wait_for(lambda: runner_pids(agent.process.pid), timeout=20, what="the agent to start a runner")[0]


def kill_only(agent):
    """SIGKILL the agent alone: its runners live on, orphaned."""
    agent.process.kill()
    agent.process.wait()


def logs_of(run):
    drain_logs()
    return list(Log.objects.filter(flow_run=run).values_list("message", flat=True))


def story(run, *agents):
    rows = list(StateChange.objects.filter(flow_run=run).values_list("task_run__task_key", "to_state", "message"))
    return f"history {rows}\nlogs {logs_of(run)}\n" + "\n".join(a.output()[-2000:] for a in agents)


def test_a_runner_whose_agent_died_finishes_the_run_and_reports_it_itself(ws, workspace_url, start_agent,
                                                                           operator_key, tmp_path):
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:three_steps", marks=str(marks), gate=str(gate))
    agent = start_agent(workspace_url, operator_key, "faults", "doomed")
    wait_for(lambda: executions(marks, "two"), timeout=30, what=lambda: story(run, agent))
    runner = the_runner_of(agent)

    kill_only(agent)
    wait_for(lambda: any(ORPHAN_WARNING in m for m in logs_of(run)), timeout=15,
             what=lambda: f"the orphaned runner to say so\n{story(run, agent)}")
    gate.write_text("open")  # everything from here on happens after the agent died
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.COMPLETED, timeout=20,
             what=lambda: f"the runner to complete the run\n{story(run, agent)}")
    wait_for(lambda: not alive(runner), timeout=10, what="the runner to exit")

    run.refresh_from_db()
    assert run.state_message == "The flow returned; reported by its runner."
    flow_history = list(StateChange.objects.filter(flow_run=run, task_run=None).values_list("to_state", "actor"))
    assert flow_history == [(State.SUBMITTED, Actor.AGENT), (State.RUNNING, Actor.AGENT),
                            (State.COMPLETED, Actor.AGENT)]
    assert [executions(marks, name) for name in ("one", "two", "three")] == [[str(runner)]] * 3
    assert set(TaskRun.objects.filter(flow_run=run).values_list("state", flat=True)) == {State.COMPLETED}
    messages = logs_of(run)
    warning = next(m for m in messages if ORPHAN_WARNING in m)
    assert f"Agent doomed (pid {agent.process.pid})" in warning
    # Written after the agent died: print, a subprocess's output, and Python logging.
    assert f"step two done in {runner}" in messages
    assert "printed by a subprocess of the flow" in messages
    assert "tests.flows: logged after step two" in messages


def test_an_orphaned_runner_with_heartbeats_off_hands_the_run_back(ws, workspace_url, start_agent, operator_key,
                                                                    tmp_path, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "HANDBACK_DELAY_SECONDS": 4}
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:three_steps", marks=str(marks), gate=str(gate))
    first = start_agent(workspace_url, operator_key, "faults", "silent-1", "--heartbeat-mode", "off")
    wait_for(lambda: executions(marks, "two"), timeout=30, what=lambda: story(run, first))
    runner = the_runner_of(first)

    kill_only(first)
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.SCHEDULED, timeout=15,
             what=lambda: f"the runner to hand the run back\n{story(run, first)}")
    wait_for(lambda: not alive(runner), timeout=10, what="the runner to exit")
    run.refresh_from_db()
    assert run.state_message.startswith("Handed back by its runner: agent silent-1")
    # Its last lines say why: they went before the hand-back, which ended its report token.
    assert any("Heartbeats are off, so nobody can tell this runner from a dead one" in m for m in logs_of(run))
    assert run.agent is None and run.start_time is None
    assert not os.path.exists(gate) and executions(marks, "two") == [str(runner)]  # stopped while it waited
    tasks = {t.dynamic_key: t for t in TaskRun.objects.filter(flow_run=run)}
    assert (tasks["0"].state, tasks["0"].result) == (State.COMPLETED, {"value": {"step": "one", "pid": runner}})
    assert tasks["1"].state == State.SCHEDULED  # interrupted: the next attempt runs it again

    # Another agent takes the run over: the step that completed is not run again.
    gate.write_text("open")
    second = start_agent(workspace_url, operator_key, "faults", "silent-2", "--heartbeat-mode", "off")
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.COMPLETED, timeout=30,
             what=lambda: story(run, first, second))
    assert len(executions(marks, "one")) == 1 and len(executions(marks, "two")) == 2
    # The second attempt started no sooner than the hand-back delay after the hand-back.
    handed_back, restarted = (StateChange.objects.filter(flow_run=run, task_run=None, to_state=state)
                              .values_list("timestamp", flat=True).last() for state in (State.SCHEDULED, State.RUNNING))
    assert restarted - handed_back >= timedelta(seconds=4)
    assert json.loads((marks / "results.json").read_text())[0] == {"step": "one", "pid": runner}
    assert any("Task step completed in an earlier attempt; its result stands." in m for m in logs_of(run))


def cancel(api, ws, run):
    from tests.conftest import api_prefix

    api.as_key(factories.api_key(ws, role=Role.OPERATOR)[1])
    answer = api.post(f"{api_prefix(ws)}/flow_runs/{run.pk}/cancel/")
    assert answer.status_code == 200 and answer.json()["state"] == State.CANCELLING, answer.content
    return time.monotonic()


def test_cancelling_a_running_run_stops_its_flow_and_ends_it_cancelled(ws, workspace_url, start_agent, operator_key,
                                                                       api, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:cancellable", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "canceller",
                        env={"ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS": "5"})
    wait_for(lambda: executions(marks, "hold"), timeout=30, what=lambda: story(run, agent))
    runner = the_runner_of(agent)

    asked = cancel(api, ws, run)
    wait_for(lambda: not alive(runner), timeout=5, what=lambda: f"the runner to stop\n{story(run, agent)}")
    assert time.monotonic() - asked < 5  # within the grace: it stopped when asked, no SIGKILL needed
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.CANCELLED, timeout=10, what=lambda: story(run, agent))
    assert (marks / "cleaned-up").exists() and not (marks / "swallowed").exists()
    assert TaskRun.objects.get(flow_run=run).state == State.CANCELLED
    assert agent.process.poll() is None  # the agent carries on


@pytest.mark.parametrize("mode, killer", [("thread", "runner"), ("off", "agent")])
def test_a_run_that_ignores_sigterm_is_killed_after_the_cancel_grace(ws, workspace_url, start_agent, operator_key,
                                                                      api, tmp_path, mode, killer):
    """Its runner learns of the cancellation from the run's heartbeat, and kills the flow after the grace;
    with heartbeats off it cannot (the flow ignores SIGTERM), and its agent kills the whole process
    group once the runner's hard deadline (grace + stop window) and its watchdog's lag have passed."""
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:stubborn", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "killer", "--heartbeat-mode", mode,
                        env={"ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS": "1.5",
                             "ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS": "1"})
    wait_for(lambda: (marks / "stubborn").exists(), timeout=30, what=lambda: story(run, agent))
    runner = the_runner_of(agent)

    asked = cancel(api, ws, run)
    wait_for(lambda: not alive(runner), timeout=15, what=lambda: f"the runner to be killed\n{story(run, agent)}")
    assert time.monotonic() - asked >= 1.5  # the grace
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.CANCELLED, timeout=10, what=lambda: story(run, agent))
    run.refresh_from_db()
    assert run.state_message == {
        "runner": "Cancelled: the flow did not stop within 1.5 s, so its runner killed it; reported by its runner.",
        "agent": "Cancelled: agent killer ended the flow's process (SIGTERM, then SIGKILL after 3.5 s).",
    }[killer]


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_an_orphaned_runner_stops_itself_when_its_run_is_cancelled(ws, workspace_url, start_agent, operator_key,
                                                                    api, tmp_path, mode):
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:cancellable", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "gone", "--heartbeat-mode", mode)
    wait_for(lambda: executions(marks, "hold"), timeout=30, what=lambda: story(run, agent))
    runner = the_runner_of(agent)
    kill_only(agent)
    wait_for(lambda: any(ORPHAN_WARNING in m for m in logs_of(run)), timeout=15, what=lambda: story(run, agent))

    cancel(api, ws, run)
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.CANCELLED, timeout=10,
             what=lambda: f"the orphaned runner to cancel its run\n{story(run, agent)}")
    wait_for(lambda: not alive(runner), timeout=5, what="the runner to exit")
    run.refresh_from_db()
    assert run.state_message == "Cancelled: the flow stopped when asked; reported by its runner."
    # Told by its heartbeat thread or, in mode process, by the thread that reads its heartbeat process.
    assert "agent.runner: The run is CANCELLING: stopping the flow." in logs_of(run)
    assert (marks / "cleaned-up").exists()
    assert TaskRun.objects.get(flow_run=run).state == State.CANCELLED


def test_a_runner_killed_before_it_could_report_is_reported_crashed_by_its_agent(ws, workspace_url, start_agent,
                                                                                  operator_key):
    run = queued_run(ws, "tests.agent.flows:killed")
    agent = start_agent(workspace_url, operator_key, "faults", "witness")
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.CRASHED, timeout=30, what=lambda: story(run, agent))
    run.refresh_from_db()
    assert run.state_message == ("The flow's process was killed by SIGKILL (the out-of-memory killer does this) "
                                 "before it could report.")
    # Its last lines, which its shipper had not sent: the agent found them in the runner's journal.
    assert {"tests.flows: about to be killed", "printed just before"} <= set(logs_of(run))


def test_a_pool_that_terminates_its_workers_does_not_end_the_run(ws, workspace_url, start_agent, operator_key):
    """Forked workers got a copy of the runner: the SIGTERM that ends them (leaving a pool's with block,
    Process.terminate()) once armed the group's watchdog, which SIGKILLed the whole run grace + stop
    window + 1 s later (3.5 s here; the flow runs on for 8 s)."""
    run = queued_run(ws, "tests.agent.flows:pooled", seconds=8)
    agent = start_agent(workspace_url, operator_key, "faults", "pools",
                        env={"ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS": "1.5",
                             "ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS": "1"})
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state in TERMINAL_STATES, timeout=60,
             what=lambda: story(run, agent))
    run.refresh_from_db()
    assert (run.state, run.state_message) == (State.COMPLETED, "The flow returned; reported by its runner."), \
        story(run, agent)
    assert "Flow returned ([0, 1, 4, 9], -15)" in " ".join(logs_of(run))  # the worker died of its SIGTERM


def test_a_runner_whose_heartbeat_process_is_killed_beats_from_a_thread(ws, workspace_url, start_agent, operator_key):
    run = queued_run(ws, "tests.agent.flows:steady", seconds=6)
    agent = start_agent(workspace_url, operator_key, "faults", "beats", "--heartbeat-mode", "process")
    runner = the_runner_of(agent)
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).last_heartbeat, timeout=20, what=lambda: story(run, agent))

    def forks_with_the_runners_command_line():
        return {pid for pid in process_tree(runner)[1:] if pid in runner_pids(agent.process.pid)}

    def heartbeat_processes():
        # The runner's fork that keeps its command line, not its watchdog: a shell, which has the
        # runner's command line too between its fork and its exec. Seen twice, 0.2 s apart.
        seen = forks_with_the_runners_command_line()
        time.sleep(0.2)
        return sorted(seen & forks_with_the_runners_command_line())

    beater = wait_for(heartbeat_processes, timeout=20, what="the runner's heartbeat process")[0]
    os.kill(beater, 9)
    killed_at = time.time()
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).last_heartbeat.timestamp() > killed_at + 0.5, timeout=10,
             what=lambda: f"a beat after the heartbeat process died\n{story(run, agent)}")
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state in TERMINAL_STATES, timeout=60,
             what=lambda: story(run, agent))
    run.refresh_from_db()
    assert run.state == State.COMPLETED, story(run, agent)
    assert any("The heartbeat process ended (exit code -9) while its run goes on" in m for m in logs_of(run)), \
        story(run, agent)
