"""The Zombie Killer fails silent task runs and crashes silent flow runs, and nothing else."""

from datetime import timedelta

import pytest

from events.models import Event
from runs.models import Actor, Log, State
from services import zombie_killer
from tests import factories
from tests.recovery.conftest import history

pytestmark = pytest.mark.django_db
MESSAGE = 'Marked "Failed" by a Zombie Killer process'


@pytest.fixture
def live_agent(ws, ago):
    return factories.agent(ws, last_heartbeat=ago(5), heartbeat_interval=30)


@pytest.fixture
def running(flow, ago, live_agent):
    """running(task_beat=…, **flow_run fields) -> (flow run, task run), heartbeats every 30 s."""

    def make(task_beat=None, task_start=None, **kw):
        fields = {"start_time": ago(3600), "last_heartbeat": ago(5), "heartbeat_interval": 30, "agent": live_agent,
                  "state_changed": ago(3600), **kw}
        run = factories.flow_run(kw.pop("flow", flow), State.RUNNING, **fields)
        task = factories.task_run(run, State.RUNNING, last_heartbeat=task_beat, start_time=task_start or ago(3600))
        return run, task

    return make


def test_task_run_silent_past_threshold_is_failed_with_the_zombie_message(running, now, ago):
    run, task = running(task_beat=ago(11 * 60))
    assert zombie_killer.run_once(now) == {"task_runs_failed": 1, "flow_runs_crashed": 0}
    task.refresh_from_db()
    assert task.state == State.FAILED and task.state_message == MESSAGE
    assert history(run, task) == [(State.RUNNING, State.FAILED, Actor.ZOMBIE_KILLER, MESSAGE)]
    log = Log.objects.get(task_run=task)
    assert log.source == "zombie-killer" and "no heartbeat for over 600 s" in log.message


def test_healthy_task_run_is_left_alone(running, now, ago):
    run, task = running(task_beat=ago(60))
    assert zombie_killer.run_once(now)["task_runs_failed"] == 0
    task.refresh_from_db()
    assert task.state == State.RUNNING and not Log.objects.exists()


def test_task_run_that_never_beat_is_judged_from_its_start_time(running, now, ago):
    _, old = running(task_beat=None, task_start=ago(11 * 60))
    _, young = running(task_beat=None, task_start=ago(5 * 60))
    zombie_killer.run_once(now)
    old.refresh_from_db(), young.refresh_from_db()
    assert (old.state, young.state) == (State.FAILED, State.RUNNING)


def test_verdict_waits_for_three_missed_beats_of_a_slow_heartbeat(running, now, ago):
    # Beats every 5 minutes: 11 minutes of silence is only two missed beats.
    _, slow = running(task_beat=ago(11 * 60), heartbeat_interval=300)
    _, dead = running(task_beat=ago(16 * 60), heartbeat_interval=300)
    zombie_killer.run_once(now)
    slow.refresh_from_db(), dead.refresh_from_db()
    assert (slow.state, dead.state) == (State.RUNNING, State.FAILED)


def test_heartbeats_off_judged_by_the_agents_heartbeat(running, ws, now, ago):
    silent_agent = factories.agent(ws, last_heartbeat=ago(3600), heartbeat_interval=30)
    _, quiet = running(task_beat=None, heartbeat_interval=None, last_heartbeat=None)
    _, orphan = running(task_beat=None, heartbeat_interval=None, last_heartbeat=None, agent=silent_agent)
    zombie_killer.run_once(now)
    quiet.refresh_from_db(), orphan.refresh_from_db()
    assert (quiet.state, orphan.state) == (State.RUNNING, State.FAILED)


def test_flow_run_silent_past_its_threshold_is_crashed(running, now, ago):
    crashed, _ = running(task_beat=ago(31 * 60), last_heartbeat=ago(31 * 60))
    quiet, _ = running(task_beat=ago(10), last_heartbeat=ago(11 * 60))
    assert zombie_killer.run_once(now) == {"task_runs_failed": 1, "flow_runs_crashed": 1}
    crashed.refresh_from_db(), quiet.refresh_from_db()
    assert (crashed.state, quiet.state) == (State.CRASHED, State.RUNNING)
    assert history(crashed)[-1][1:3] == (State.CRASHED, Actor.ZOMBIE_KILLER)
    assert Log.objects.filter(flow_run=crashed, task_run__isnull=True, source="zombie-killer").count() == 1


def test_flow_run_whose_own_heartbeat_stopped_lives_while_its_task_runs_beat(running, now, ago):
    # Its own beat is 31 min old (threshold 30 min), but a task run beat a minute ago: it is alive.
    run, task = running(task_beat=ago(60), last_heartbeat=ago(31 * 60))
    assert zombie_killer.run_once(now) == {"task_runs_failed": 0, "flow_runs_crashed": 0}
    run.refresh_from_db(), task.refresh_from_db()
    assert (run.state, task.state) == (State.RUNNING, State.RUNNING) and not Log.objects.exists()
    # Then the task run stops beating too: 31 min later both are judged.
    assert zombie_killer.run_once(now + timedelta(minutes=30)) == {"task_runs_failed": 1, "flow_runs_crashed": 1}
    run.refresh_from_db()
    assert run.state == State.CRASHED and history(run)[-1][1:3] == (State.CRASHED, Actor.ZOMBIE_KILLER)


def test_a_failed_task_runs_last_beat_still_counts_for_its_flow_run(running, now, ago):
    # The task run is a zombie (20 min > 10 min) and is failed, but it beat within the flow run's
    # 30 min: the flow run is left to Lazarus, which acts first, rather than crashed in the same pass.
    run, _ = running(task_beat=ago(20 * 60), last_heartbeat=ago(40 * 60))
    assert zombie_killer.run_once(now) == {"task_runs_failed": 1, "flow_runs_crashed": 0}
    run.refresh_from_db()
    assert run.state == State.RUNNING


def test_a_slow_heartbeat_counts_task_run_beats_within_its_missed_beats(running, now, ago):
    # Beats every 15 min: 3 missed beats = 45 min. Its own beat is 50 min old, a task run's 40 min.
    alive, _ = running(task_beat=ago(40 * 60), last_heartbeat=ago(50 * 60), heartbeat_interval=900)
    dead, _ = running(task_beat=ago(46 * 60), last_heartbeat=ago(50 * 60), heartbeat_interval=900)
    assert zombie_killer.run_once(now) == {"task_runs_failed": 1, "flow_runs_crashed": 1}
    alive.refresh_from_db(), dead.refresh_from_db()
    assert (alive.state, dead.state) == (State.RUNNING, State.CRASHED)


def test_terminal_paused_and_paused_schedule_runs_are_left_alone(flow, paused_schedule_flow, now, ago):
    sched_flow, sched = paused_schedule_flow
    finished = factories.flow_run(flow, State.COMPLETED, last_heartbeat=ago(7200), heartbeat_interval=30)
    done_task = factories.task_run(finished, State.COMPLETED, last_heartbeat=ago(7200))
    paused = factories.flow_run(flow, State.PAUSED, last_heartbeat=ago(7200), heartbeat_interval=30)
    paused_task = factories.task_run(paused, State.PAUSED, last_heartbeat=ago(7200))
    of_paused_schedule = factories.flow_run(sched_flow, State.SCHEDULED, schedule=sched, scheduled_start=ago(7200))
    assert zombie_killer.run_once(now) == {"task_runs_failed": 0, "flow_runs_crashed": 0}
    for obj, state in [(finished, State.COMPLETED), (done_task, State.COMPLETED), (paused, State.PAUSED),
                       (paused_task, State.PAUSED), (of_paused_schedule, State.SCHEDULED)]:
        obj.refresh_from_db()
        assert obj.state == state


def test_each_workspace_sees_only_its_own_verdicts(running, other_ws, ws, now, ago, flush_events):
    other_flow = factories.flow(other_ws)
    other_agent = factories.agent(other_ws, last_heartbeat=ago(5))
    _, healthy_elsewhere = running(task_beat=ago(30), flow=other_flow, agent=other_agent)
    _, zombie_here = running(task_beat=ago(3600))
    zombie_killer.run_once(now)
    healthy_elsewhere.refresh_from_db(), zombie_here.refresh_from_db()
    assert (healthy_elsewhere.state, zombie_here.state) == (State.RUNNING, State.FAILED)
    flush_events()
    assert Event.objects.filter(workspace=ws, name="task-run.state.failed").count() == 1
    assert not Event.objects.filter(workspace=other_ws).exists()


@pytest.mark.parametrize("zombies", [2, 25])
def test_a_pass_costs_the_same_queries_for_2_or_25_zombies(running, now, ago, zombies,
                                                            django_assert_max_num_queries):
    for _ in range(zombies):
        running(task_beat=ago(3600), last_heartbeat=ago(3600))
        running(task_beat=ago(60), last_heartbeat=ago(3600))  # alive through its task run's beat
    with django_assert_max_num_queries(QUERIES_PER_PASS):
        summary = zombie_killer.run_once(now)
    assert summary == {"task_runs_failed": zombies, "flow_runs_crashed": zombies}


# Whatever the number of runs: per verdict (task runs, then flow runs) a silent-agent lookup, one
# candidate query (task runs' beats are judged inside it) and a transition (savepoint, select for
# update, update, history, events, release); then one insert of the logs.
QUERIES_PER_PASS = 17
