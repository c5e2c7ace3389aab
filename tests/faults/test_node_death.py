"""A node dies: SIGKILL of an agent and of every runner it started, mid-task. The Zombie Killer and
Lazarus recover its runs, another agent finishes them, and tasks that completed before stand.

Another kills a node running three overlapping runs of one schedule: each keeps the slot it was
made for, every service pass succeeds, and no completed task runs again. The last freezes a node
instead (a partition) and wakes it while another node runs its recovered run: the old attempt is
superseded and runs nothing more.
"""

from pathlib import Path

import json
import os
import signal
import subprocess
import sys

import pytest
from django.utils import timezone

from runs.models import TERMINAL_STATES, Actor, FlowRun, Role, State, StateChange, TaskRun
from runs.scheduling import pause_schedule, schedule_future_runs
from services import towel
from services.models import ServicePass
from tests import factories
from tests.agent.conftest import REPO, drain_logs, free_port, process_tree, runner_pids, wait_for
from tests.conftest import api_prefix

# PostgreSQL only, as the rest of the fault suite (conftest.py `postgres`).
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("postgres")]

# Test-speed thresholds: beats every 0.3 s (declared 1 s), verdicts after about 3 s.
FAST = {"ZOMBIE_KILLER_THRESHOLD_SECONDS": 2, "ZOMBIE_KILLER_FLOW_RUN_THRESHOLD_SECONDS": 120,
        "LAZARUS_GRACE_SECONDS": 2, "LAZARUS_STARTING_GRACE_SECONDS": 30, "HEARTBEAT_MISSED_BEATS": 3}


@pytest.fixture
def fast_services(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, **FAST}


@pytest.fixture
def agents(tmp_path):
    """agents(api_url, key, queue, name) -> Popen of an agent in its own process group (killed at teardown)."""
    started = []

    def start(api_url, key, queue, name):
        env = {**os.environ, "ORCHESTRATOR_AGENT_QUERY_SECONDS": "0.3", "ORCHESTRATOR_AGENT_HEARTBEAT_SECONDS": "1",
               "ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS": "0.3", "ORCHESTRATOR_AGENT_WEBSERVER_PORT": str(free_port())}
        log = (tmp_path / f"{name}.log").open("w")
        process = subprocess.Popen([sys.executable, "-m", "agent", "start", "--api", api_url, "--key", key,
                                    "--queue", queue, "--name", name], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            _kill_node(process)


def _kill_node(process):
    """SIGKILL the agent and everything it started, as if its machine died."""
    for pid in process_tree(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _story(run_id, tmp_path):
    rows = StateChange.objects.filter(flow_run_id=run_id).values_list("task_run__task_key", "to_state", "actor")
    logs = "".join(p.read_text(errors="replace")[-1500:] for p in sorted(tmp_path.glob("*.log")))
    return f"history {list(rows)}\n{logs}"


def _recover_until(predicate, what, timeout=90):
    """Beat the recovery services every 0.3 s, as Celery beat would, until `predicate()` holds."""

    def beat():
        for name in ("zombie-killer", "lazarus", "agent-monitor", "mark-late-runs", "cancellation-cleanup"):
            towel.run(name)
        return predicate()

    return wait_for(beat, timeout=timeout, interval=0.3, what=what)


def test_a_killed_agents_run_is_failed_rescheduled_and_completed_by_another(ws, live_server, fast_services, agents,
                                                                             tmp_path):
    queue = factories.work_queue(ws, name="fault")
    flow = factories.flow(ws, entrypoint="tests.recovery.flows:resumable")
    run = factories.flow_run(flow, work_queue=queue, parameters={"marker": str(tmp_path / "marker")})
    url, key = live_server.url + api_prefix(ws), factories.api_key(ws, role=Role.AGENT)[1]

    node_a = agents(url, key, "fault", "agent-a")
    long_task = wait_for(lambda: TaskRun.objects.filter(flow_run=run, task_key="long_step", state=State.RUNNING).first(),
                         what="agent A to start the long task")
    _kill_node(node_a)
    killed_at = timezone.now()

    story = lambda: _story(run.pk, tmp_path)  # noqa: E731
    _recover_until(lambda: FlowRun.objects.filter(pk=run.pk, state=State.SCHEDULED, lazarus_count=1).exists(), story)
    agents(url, key, "fault", "agent-b")
    _recover_until(lambda: FlowRun.objects.get(pk=run.pk).state in TERMINAL_STATES, story)

    run.refresh_from_db()
    assert run.state == State.COMPLETED and run.agent.name == "agent-b" and run.lazarus_count == 1
    long_task.refresh_from_db()
    assert (long_task.state, long_task.state_message) == (State.FAILED, 'Marked "Failed" by a Zombie Killer process')
    assert not FlowRun.objects.exclude(state__in=TERMINAL_STATES).exists()
    assert not TaskRun.objects.exclude(state__in=TERMINAL_STATES).exists()

    steps = list(StateChange.objects.filter(flow_run=run, task_run=None).values_list("to_state", "actor", "timestamp"))
    assert [(to, actor) for to, actor, _ in steps] == [
        (State.SUBMITTED, Actor.AGENT), (State.RUNNING, Actor.AGENT), (State.SCHEDULED, Actor.LAZARUS),
        (State.SUBMITTED, Actor.AGENT), (State.RUNNING, Actor.AGENT), (State.COMPLETED, Actor.AGENT)]
    # Never twice at once: B claimed only after A was dead and its task had been failed.
    task_failed_at = StateChange.objects.get(task_run=long_task, to_state=State.FAILED).timestamp
    assert StateChange.objects.get(task_run=long_task, to_state=State.FAILED).actor == Actor.ZOMBIE_KILLER
    assert killed_at < task_failed_at < steps[2][2] < steps[3][2]
    assert run.logs.filter(source="lazarus", message__contains="attempt 1 of 10").exists()


def test_a_new_attempt_keeps_the_results_of_tasks_that_completed_before_the_machine_died(
        ws, live_server, fast_services, agents, tmp_path):
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    queue = factories.work_queue(ws, name="fault")
    flow = factories.flow(ws, entrypoint="tests.agent.flows:three_steps")
    run = factories.flow_run(flow, work_queue=queue, parameters={"marks": str(marks), "gate": str(gate)})
    url, key = live_server.url + api_prefix(ws), factories.api_key(ws, role=Role.AGENT)[1]
    ran = lambda name: (marks / name).read_text().split() if (marks / name).exists() else []  # noqa: E731

    node_a = agents(url, key, "fault", "agent-a")
    wait_for(lambda: ran("two"), what="agent A's runner to reach step two")  # step one COMPLETED, two waits
    [runner_a] = runner_pids(node_a.pid)
    _kill_node(node_a)

    story = lambda: _story(run.pk, tmp_path)  # noqa: E731
    _recover_until(lambda: FlowRun.objects.filter(pk=run.pk, state=State.SCHEDULED, lazarus_count=1).exists(), story)
    gate.write_text("open")
    agents(url, key, "fault", "agent-b")
    _recover_until(lambda: FlowRun.objects.get(pk=run.pk).state in TERMINAL_STATES, story)

    run.refresh_from_db()
    assert (run.state, run.agent.name, run.lazarus_count) == (State.COMPLETED, "agent-b", 1), story()
    # Step one ran once, in the first attempt; step two, killed mid-way, ran again; step three once.
    assert [len(ran(name)) for name in ("one", "two", "three")] == [1, 2, 1]
    one, two, three = json.loads((marks / "results.json").read_text())
    assert one == {"step": "one", "pid": runner_a}  # the first attempt's stored result, not a new one
    assert two["pid"] == three["pid"] != runner_a
    steps = {t.dynamic_key: t for t in TaskRun.objects.filter(flow_run=run)}
    assert list(StateChange.objects.filter(task_run=steps["0"]).values_list("to_state", flat=True)) == [
        State.RUNNING, State.COMPLETED]
    assert list(StateChange.objects.filter(task_run=steps["1"]).values_list("to_state", "actor")) == [
        (State.RUNNING, Actor.AGENT), (State.FAILED, Actor.ZOMBIE_KILLER), (State.SCHEDULED, Actor.AGENT),
        (State.RUNNING, Actor.AGENT), (State.COMPLETED, Actor.AGENT)]
    drain_logs()  # with Redis, the agent's lines wait in the stream for the log persister
    assert run.logs.filter(message__contains="Task step completed in an earlier attempt; its result stands").count() == 1


def _executions(marker_dir, run, name):
    """(starts, ends) of step `name` of `run`, from the lines tests.faults.flows:step writes."""
    path = Path(marker_dir) / f"{run.pk}-{name}"
    lines = path.read_text().split() if path.exists() else []
    return lines.count("start"), lines.count("end")


def test_overlapping_runs_of_a_dead_node_finish_elsewhere_under_their_own_slots(ws, live_server, fast_services,
                                                                                agents, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    queue = factories.work_queue(ws, name="node")
    flow = factories.flow(ws, entrypoint="tests.faults.flows:three_steps")
    schedule = factories.schedule(flow, slug="every-second", interval_seconds=1, work_queue=queue,
                                  parameters={"marker_dir": str(markers), "seconds": 4})
    url, key = live_server.url + api_prefix(ws), factories.api_key(ws, role=Role.AGENT)[1]
    started = timezone.now()
    schedule_future_runs([schedule], started, count=3)
    node_a = agents(url, key, "node", "node-a")

    def mid_way():  # all three runs at once inside their second step (RUNNING, and its code begun)
        running = FlowRun.objects.filter(schedule=schedule, task_runs__task_key="step", task_runs__dynamic_key="1",
                                         task_runs__state=State.RUNNING)
        return running.count() == 3 and all(_executions(markers, run, "transform")[0] == 1 for run in running)

    wait_for(mid_way, timeout=60, what=lambda: _story(None, tmp_path))
    pause_schedule(schedule)  # no more runs: the three in flight are the story
    slots = dict(FlowRun.objects.filter(schedule=schedule).values_list("pk", "slot"))
    assert len(slots) == 3 and len(set(slots.values())) == 3
    _kill_node(node_a)

    _recover_until(lambda: FlowRun.objects.filter(pk__in=slots, state=State.SCHEDULED, lazarus_count=1).count() == 3,
                   what="Lazarus to reschedule the dead node's three runs")
    agents(url, key, "node", "node-b")
    _recover_until(lambda: not FlowRun.objects.filter(pk__in=slots).exclude(state__in=TERMINAL_STATES).exists(),
                   timeout=120, what=lambda: _story(None, tmp_path))

    failed = ServicePass.objects.filter(ok=False, started__gte=started)
    assert not failed.exists(), list(failed.values_list("service", "error"))
    for run in FlowRun.objects.filter(pk__in=slots):
        assert (run.state, run.slot, run.agent.name) == (State.COMPLETED, slots[run.pk], "node-b")
        # The first step had completed on node A: it stands. The second was cut off and ran again.
        assert _executions(markers, run, "extract") == (1, 1)
        assert _executions(markers, run, "transform") == (2, 1)
        assert _executions(markers, run, "load") == (1, 1)


def _signal_node(process, signum):
    for pid in process_tree(process.pid):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def test_a_frozen_node_that_comes_back_is_superseded_and_runs_nothing_more(ws, live_server, fast_services, agents,
                                                                            tmp_path):
    """A partition, not a death: node A is frozen (SIGSTOP) mid-task, its run is recovered and taken
    by node B, then A wakes up (SIGCONT) while B runs. A's runner must hear `superseded` and stop:
    it completes nothing of B's attempt and never starts the steps after the one it was in."""
    markers = tmp_path / "markers"
    markers.mkdir()
    queue = factories.work_queue(ws, name="node")
    flow = factories.flow(ws, entrypoint="tests.faults.flows:three_steps")
    run = factories.flow_run(flow, work_queue=queue, parameters={"marker_dir": str(markers), "seconds": 4})
    url, key = live_server.url + api_prefix(ws), factories.api_key(ws, role=Role.AGENT)[1]
    story = lambda: _story(run.pk, tmp_path)  # noqa: E731

    node_a = agents(url, key, "node", "node-a")
    wait_for(lambda: TaskRun.objects.filter(flow_run=run, dynamic_key="1", state=State.RUNNING).exists()
             and _executions(markers, run, "transform")[0] == 1, what="node A to be inside the second step")
    [runner_a] = runner_pids(node_a.pid)
    _signal_node(node_a, signal.SIGSTOP)

    _recover_until(lambda: FlowRun.objects.filter(pk=run.pk, state=State.SCHEDULED, lazarus_count=1).exists(), story)
    agents(url, key, "node", "node-b")
    wait_for(lambda: FlowRun.objects.filter(pk=run.pk, state=State.RUNNING, agent__name="node-b").exists(),
             what=story)
    _signal_node(node_a, signal.SIGCONT)  # A wakes up in the middle of B's attempt

    wait_for(lambda: not _alive(runner_a), timeout=60, what=lambda: "node A's runner to stop\n" + story())
    _recover_until(lambda: FlowRun.objects.get(pk=run.pk).state in TERMINAL_STATES, story)

    run.refresh_from_db()
    assert (run.state, run.agent.name, run.lazarus_count) == (State.COMPLETED, "node-b", 1), story()
    assert list(StateChange.objects.filter(flow_run=run, task_run=None).values_list("to_state", "actor")) == [
        (State.SUBMITTED, Actor.AGENT), (State.RUNNING, Actor.AGENT), (State.SCHEDULED, Actor.LAZARUS),
        (State.SUBMITTED, Actor.AGENT), (State.RUNNING, Actor.AGENT), (State.COMPLETED, Actor.AGENT)], story()
    # The step A was frozen in was cut off and ran again on B; A never started the last one.
    assert _executions(markers, run, "extract") == (1, 1)
    assert _executions(markers, run, "transform")[0] == 2
    assert _executions(markers, run, "load") == (1, 1), story()
    transform = TaskRun.objects.get(flow_run=run, task_key="step", dynamic_key="1")
    # One COMPLETED, B's: A's late one was refused, not written over B's RUNNING.
    assert list(StateChange.objects.filter(task_run=transform).values_list("to_state", flat=True)).count(
        State.COMPLETED) == 1, story()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its frozen-then-woken agent) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
