"""Stopping a run is bounded and complete: real agent and runner processes, a live server, real signals.

Whatever the flow does when asked to stop (swallows FlowRunStopped and loops, holds the GIL in C
code, sleeps in a thread of its own), its runner ends within its hard deadline, and no process of
the flow (a child that ignores SIGTERM, a grandchild that double-forked) outlives the run's report.
And exit code 0 proves nothing without the runner's mark: a flow calling os._exit(0) is CRASHED.
"""

import os
import signal

import pytest

from runs.models import TERMINAL_STATES, FlowRun, State, StateChange
from tests.faults.conftest import postgres  # noqa: F401

from .conftest import alive, wait_for
from .test_runners_on_their_own import kill_only, operator_key, queued_run, story, the_runner_of  # noqa: F401

# PostgreSQL only, as the fault suite (tests/faults/conftest.py `postgres`): skipped on SQLite unless
# ORCHESTRATOR_REQUIRE_SERVICES=1, which CI sets, makes it fail.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("postgres")]

# A short grace; the window only costs time when a runner cannot end the run within it.
QUICK_STOP = {"ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS": "1", "ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS": "5"}


def children(marks):
    """The pids the flow's stubborn child and double-forked grandchild wrote."""
    return [int(pid) for pid in (marks / "children").read_text().split()]


def final(run):
    """The run's state once it is terminal, else None."""
    run.refresh_from_db()
    return run.state if run.state in TERMINAL_STATES else None


def test_an_orphaned_runner_whose_flow_swallows_the_stop_hands_back_and_leaves_nothing(
        ws, workspace_url, start_agent, operator_key, tmp_path):  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:deaf", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "deaf", "--heartbeat-mode", "off", env=QUICK_STOP)
    wait_for(lambda: (marks / "ready").exists(), timeout=30, what=lambda: story(run, agent))
    runner = the_runner_of(agent)

    kill_only(agent)
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.SCHEDULED, timeout=20,
             what=lambda: f"the runner to hand the run back\n{story(run, agent)}")
    assert (marks / "ignored").exists()  # it did swallow FlowRunStopped
    run.refresh_from_db()
    assert "the flow did not stop within 1 s, so its runner killed it" in run.state_message
    # Killed before the report: the stubborn child and the double-forked grandchild are gone already.
    assert [pid for pid in children(marks) if alive(pid)] == []
    wait_for(lambda: not alive(runner), timeout=15, what=lambda: f"the runner to exit\n{story(run, agent)}")


def test_a_runner_signalled_from_outside_ends_a_flow_that_swallows_the_stop(ws, workspace_url, start_agent,
                                                                             operator_key, tmp_path):  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:deaf", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "deaf-signalled", env=QUICK_STOP)
    wait_for(lambda: (marks / "ready").exists(), timeout=30, what=lambda: story(run, agent))
    runner = the_runner_of(agent)

    os.kill(runner, signal.SIGTERM)  # someone's `kill`: not the agent, which carries on
    wait_for(lambda: final(run), timeout=20, what=lambda: f"the run to end\n{story(run, agent)}")
    run.refresh_from_db()
    assert run.state == State.CRASHED
    assert run.state_message == ("The flow's process was stopped by SIGTERM; the flow did not stop within 1 s, so "
                                 "its runner killed it.")  # the runner's verdict, reported by its agent
    assert not alive(runner) and [pid for pid in children(marks) if alive(pid)] == []
    assert agent.process.poll() is None


def test_a_flow_holding_the_gil_in_c_code_is_killed_with_its_children_by_the_watchdog(
        ws, workspace_url, start_agent, operator_key, tmp_path):  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:stuck_in_c", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "stuck", env=QUICK_STOP)
    wait_for(lambda: (marks / "ready").exists(), timeout=30, what=lambda: story(run, agent))
    runner = the_runner_of(agent)

    os.kill(runner, signal.SIGTERM)
    wait_for(lambda: (marks / "ignored").exists(), timeout=10, what=lambda: story(run, agent))
    # No Python thread of the runner can run now; its watchdog kills the group 1 s after the deadline (6 s).
    wait_for(lambda: final(run), timeout=30, what=lambda: f"the run to end\n{story(run, agent)}")
    run.refresh_from_db()
    assert run.state == State.CRASHED and run.state_message.startswith(
        "The flow's process group was killed by its runner's watchdog")
    assert not alive(runner) and [pid for pid in children(marks) if alive(pid)] == []


def test_an_orphaned_runner_whose_flow_sleeps_in_its_own_thread_exits_after_it_reports(
        ws, workspace_url, start_agent, operator_key, api, tmp_path):  # noqa: F811
    from .test_runners_on_their_own import cancel

    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:sleeps_in_a_thread", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "threads", env=QUICK_STOP)
    wait_for(lambda: (marks / "ready").exists(), timeout=30, what=lambda: story(run, agent))
    runner = the_runner_of(agent)
    kill_only(agent)

    cancel(api, ws, run)
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.CANCELLED, timeout=20,
             what=lambda: f"the orphaned runner to cancel its run\n{story(run, agent)}")
    # The flow's thread is not a daemon: an interpreter exiting normally would wait 600 s for it.
    wait_for(lambda: not alive(runner), timeout=15, what=lambda: f"the runner to exit\n{story(run, agent)}")


def test_the_agent_kills_what_a_runner_that_died_left_of_its_group(ws, workspace_url, start_agent, operator_key,
                                                                     tmp_path):  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:exits_leaving_children", marks=str(marks), code=7)
    agent = start_agent(workspace_url, operator_key, "faults", "reaper")
    wait_for(lambda: final(run), timeout=30, what=lambda: story(run, agent))
    run.refresh_from_db()
    assert (run.state, run.state_message) == (State.CRASHED, "The flow's process exited with code 7 before it "
                                                             "could report.")
    # The agent killed the group before it reported: SIGKILLed, they are gone (or only dying) now.
    wait_for(lambda: not [pid for pid in children(marks) if alive(pid)], timeout=5,
             what="the flow's children to be gone")


def test_a_flow_that_exits_0_under_its_runner_is_crashed_not_trusted(ws, workspace_url, start_agent, operator_key,
                                                                     tmp_path):  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:exits_leaving_children", marks=str(marks), code=0)
    agent = start_agent(workspace_url, operator_key, "faults", "doubter")
    wait_for(lambda: final(run), timeout=30, what=lambda: f"the agent to report the run\n{story(run, agent)}")
    run.refresh_from_db()
    assert run.state == State.CRASHED
    assert "runner exited with code 0 without reporting the run's final state" in run.state_message


def test_a_flow_that_returns_leaving_children_has_them_killed_before_it_is_completed(
        ws, workspace_url, start_agent, operator_key, tmp_path):  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:returns_leaving_children", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "tidy")
    wait_for(lambda: final(run), timeout=30, what=lambda: story(run, agent))
    assert [pid for pid in children(marks) if alive(pid)] == []  # killed by the runner, before its report
    run.refresh_from_db()
    assert run.state == State.COMPLETED
    assert list(StateChange.objects.filter(flow_run=run, task_run=None).values_list("to_state", flat=True))[-1] \
        == State.COMPLETED


def test_a_stopping_runner_exits_at_its_hard_deadline_when_the_server_never_answers(tmp_path):
    """The runner alone, its server a socket that takes connections and never answers: the stop's
    requests hang, and the hard deadline (grace 1 s + window 2 s) ends the runner with its verdict."""
    import json
    import socket
    import subprocess
    import sys

    from agent.runner import EXIT_AGENT_REPORTS, VERDICT_MARKER

    from .conftest import REPO

    marks = tmp_path / "marks"
    marks.mkdir()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # never accepted: the kernel completes connections, nothing ever answers
    scratch = (tmp_path / "scratch").open("w+b")
    env = {**os.environ, **QUICK_STOP, "ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS": "2",
           "ORCHESTRATOR_FLOW_RUN_ID": "run-1", "ORCHESTRATOR_RUN_TOKEN": "t",
           "ORCHESTRATOR_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/api/accounts/a/workspaces/w",
           "ORCHESTRATOR_ENTRYPOINT": "tests.agent.flows:deaf", "ORCHESTRATOR_PARAMETERS": json.dumps({"marks": str(marks)}),
           "ORCHESTRATOR_HEARTBEAT_MODE": "off", "ORCHESTRATOR_AGENT_PID": str(os.getpid()),
           "ORCHESTRATOR_RUNNER_JOURNAL": "1"}
    runner = subprocess.Popen([sys.executable, "-m", "agent.runner"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                              stdout=scratch, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (marks / "ready").exists(), timeout=30, what="the flow to start")
        runner.send_signal(signal.SIGTERM)
        wait_for(lambda: runner.poll() is not None, timeout=30, what="the runner to exit")
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        silent.close()
    scratch.seek(0)
    lines = scratch.read().decode(errors="replace").split("\n")
    assert runner.returncode == EXIT_AGENT_REPORTS, lines[-20:]
    assert any(line.startswith("The runner could not end the run within its hard deadline (3 s") for line in lines)
    verdict = json.loads([line for line in lines if line.startswith(VERDICT_MARKER)][-1][len(VERDICT_MARKER):])
    assert verdict["state"] == "CRASHED" and "did not stop within 3 s" in verdict["message"]
    assert [pid for pid in children(marks) if alive(pid)] == []


def test_a_superseded_runner_stops_its_flow_and_nobody_reports_for_it(ws, workspace_url, start_agent, operator_key,
                                                                       tmp_path):  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    run = queued_run(ws, "tests.agent.flows:superseded", marks=str(marks))
    agent = start_agent(workspace_url, operator_key, "faults", "old-attempt", env=QUICK_STOP)
    # The agent says so once its runner has exited (with the superseded mark, else it would report CRASHED).
    wait_for(lambda: "a later attempt owns it" in agent.output(), timeout=30, what=lambda: story(run, agent))
    assert [pid for pid in children(marks) if alive(pid)] == []
    run.refresh_from_db()
    assert run.state == State.RUNNING  # the later attempt reports; neither this runner nor its agent did
