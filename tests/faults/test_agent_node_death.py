"""A node dies: SIGKILL of an agent and of every runner it started, while overlapping runs of one
schedule are mid-way. The Zombie Killer and Lazarus recover them and another agent finishes them.

Afterwards every run is COMPLETED under the identity it was made with (its schedule slot), every
pass of every service succeeded, and no task that had completed ran again.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils import timezone

from runs.models import TERMINAL_STATES, FlowRun, Role, State, TaskRun
from runs.scheduling import pause_schedule, schedule_future_runs
from services.models import ServicePass
from tests import factories
from tests.agent.conftest import REPO, free_port, wait_for
from tests.conftest import api_prefix
from tests.faults.conftest import beat

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Test-speed thresholds: beats every 0.3 s (declared 1 s), verdicts after about 3 s.
FAST = {"ZOMBIE_KILLER_THRESHOLD_SECONDS": 2, "ZOMBIE_KILLER_FLOW_RUN_THRESHOLD_SECONDS": 120,
        "LAZARUS_GRACE_SECONDS": 2, "LAZARUS_STARTING_GRACE_SECONDS": 30, "HEARTBEAT_MISSED_BEATS": 3}
SERVICES = ("zombie-killer", "lazarus", "agent-monitor", "mark-late-runs", "cancellation-cleanup")


def process_tree(pid):
    """pid and every descendant, from /proc (runners start sessions of their own)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


@pytest.fixture
def node(tmp_path):
    """node(api_url, key, queue, name) -> Popen of an agent; kill_node(process) kills it and its runners."""
    started = []

    def start(api_url, key, queue, name):
        env = {**os.environ, "ORCHESTRATOR_AGENT_QUERY_SECONDS": "0.3", "ORCHESTRATOR_AGENT_HEARTBEAT_SECONDS": "1",
               "ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS": "0.3", "ORCHESTRATOR_AGENT_WEBSERVER_PORT": str(free_port())}
        process = subprocess.Popen([sys.executable, "-m", "agent", "start", "--api", api_url, "--key", key,
                                    "--queue", queue, "--name", name], cwd=REPO, env=env,
                                   stdout=(tmp_path / f"{name}.log").open("w"), stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield start
    for process in started:
        kill_node(process)


def kill_node(process):
    for pid in process_tree(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def executions(marker_dir, run, name):
    path = Path(marker_dir) / f"{run.pk}-{name}"
    lines = path.read_text().split() if path.exists() else []
    return lines.count("start"), lines.count("end")


def test_overlapping_runs_of_a_dead_node_finish_elsewhere_once(ws, live_server, settings, node, tmp_path):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, **FAST}
    markers = tmp_path / "markers"
    markers.mkdir()
    queue = factories.work_queue(ws, name="node")
    flow = factories.flow(ws, entrypoint="tests.faults.flows:three_steps")
    schedule = factories.schedule(flow, slug="every-second", interval_seconds=1, work_queue=queue,
                                  parameters={"marker_dir": str(markers), "seconds": 4})
    url, key = live_server.url + api_prefix(ws), factories.api_key(ws, role=Role.OPERATOR)[1]
    started = timezone.now()
    schedule_future_runs([schedule], started, count=3)
    node_a = node(url, key, "node", "node-a")

    def mid_way():
        # Three runs of the schedule at once, each between its first completed step and its last.
        return TaskRun.objects.filter(flow_run__schedule=schedule, task_key="step", dynamic_key="1",
                                      state=State.RUNNING).count() == 3
    wait_for(mid_way, timeout=60, what=lambda: (tmp_path / "node-a.log").read_text()[-2000:])
    pause_schedule(schedule)  # no more runs: the three in flight are the story
    runs = list(FlowRun.objects.filter(schedule=schedule).exclude(state=State.SCHEDULED).order_by("slot"))
    assert len(runs) == 3 and len({run.slot for run in runs}) == 3
    slots = {run.pk: run.slot for run in runs}
    kill_node(node_a)

    def recovered():
        beat(*SERVICES)
        return FlowRun.objects.filter(pk__in=slots, state=State.SCHEDULED, lazarus_count=1).count() == 3
    wait_for(recovered, timeout=90, interval=0.3, what="Lazarus to reschedule the dead node's runs")
    node(url, key, "node", "node-b")

    def finished():
        beat(*SERVICES)
        return not FlowRun.objects.filter(pk__in=slots).exclude(state__in=TERMINAL_STATES).exists()
    wait_for(finished, timeout=120, interval=0.3,
             what=lambda: (tmp_path / "node-b.log").read_text()[-2000:])

    failed = ServicePass.objects.filter(ok=False, started__gte=started)
    assert not failed.exists(), list(failed.values_list("service", "error"))
    for run in FlowRun.objects.filter(pk__in=slots):
        assert (run.state, run.slot, run.agent.name) == (State.COMPLETED, slots[run.pk], "node-b")
        # The first step had completed on node A: it stands. The second was cut off and ran again.
        assert executions(markers, run, "extract") == (1, 1)
        assert executions(markers, run, "transform") == (2, 1)
        assert executions(markers, run, "load") == (1, 1)
