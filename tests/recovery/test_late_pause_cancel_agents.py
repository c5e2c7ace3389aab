"""mark-late-runs, fail-expired-pauses, cancellation-cleanup and agent-monitor: what they change, what they leave."""

from datetime import timedelta

import pytest

from events.models import Event
from runs.models import Actor, AgentStatus, FlowRun, State
from services import agent_monitor, cancellation_cleanup, late_runs, pause_expirer
from tests import factories
from tests.recovery.conftest import history

pytestmark = pytest.mark.django_db


# --- mark-late-runs ---------------------------------------------------------------------------

def test_scheduled_run_past_start_plus_grace_becomes_late(flow, ago, now):
    late = factories.flow_run(flow, scheduled_start=ago(16))
    within_grace = factories.flow_run(flow, scheduled_start=ago(14))
    assert late_runs.run_once(now) == {"runs_marked_late": 1}
    late.refresh_from_db(), within_grace.refresh_from_db()
    assert (late.state, within_grace.state) == (State.LATE, State.SCHEDULED)
    assert history(late)[0][1:3] == (State.LATE, Actor.LATE_RUNS)


def test_late_runs_leaves_paused_schedules_terminal_runs_and_running_runs_alone(flow, paused_schedule_flow, ago, now):
    sched_flow, sched = paused_schedule_flow
    kept = [factories.flow_run(sched_flow, schedule=sched, auto_scheduled=True, scheduled_start=ago(600)),
            factories.flow_run(flow, State.COMPLETED, scheduled_start=ago(600)),
            factories.flow_run(flow, State.RUNNING, scheduled_start=ago(600)),
            factories.flow_run(flow, scheduled_start=ago(600), deleted_at=ago(1))]
    assert late_runs.run_once(now) == {"runs_marked_late": 0}
    assert [FlowRun.objects.get(pk=r.pk).state for r in kept] == [r.state for r in kept]


def test_late_runs_pass_runs_in_constant_queries(flow, ago, now, django_assert_max_num_queries):
    for _ in range(30):
        factories.flow_run(flow, scheduled_start=ago(60))
    with django_assert_max_num_queries(8):
        assert late_runs.run_once(now) == {"runs_marked_late": 30}


# --- fail-expired-pauses ---------------------------------------------------------------------

def test_paused_run_past_its_timeout_fails_and_others_stay(flow, other_ws, ago, now):
    expired = factories.flow_run(flow, State.PAUSED, pause_expires_at=ago(1))
    waiting = factories.flow_run(flow, State.PAUSED, pause_expires_at=ago(-600))
    forever = factories.flow_run(flow, State.PAUSED, pause_expires_at=None)
    elsewhere = factories.flow_run(factories.flow(other_ws), State.PAUSED, pause_expires_at=ago(-600))
    finished = factories.flow_run(flow, State.COMPLETED, pause_expires_at=ago(600))
    assert pause_expirer.run_once(now) == {"runs_failed": 1}
    expired.refresh_from_db()
    assert expired.state == State.FAILED and "pause timed out" in expired.state_message
    assert history(expired)[0][1:3] == (State.FAILED, Actor.PAUSE_EXPIRER)
    assert [FlowRun.objects.get(pk=r.pk).state for r in (waiting, forever, elsewhere, finished)] == [
        State.PAUSED, State.PAUSED, State.PAUSED, State.COMPLETED]


# --- cancellation-cleanup --------------------------------------------------------------------

def test_unfinished_task_runs_and_child_runs_of_cancelled_runs_are_cancelled(flow, ago, now):
    parent = factories.flow_run(flow, State.CANCELLED)
    running_task = factories.task_run(parent, State.RUNNING)
    done_task = factories.task_run(parent, State.COMPLETED)
    child = factories.flow_run(flow, State.RUNNING, parent_task_run=running_task)
    healthy = factories.flow_run(flow, State.RUNNING)
    healthy_task = factories.task_run(healthy, State.RUNNING)
    summary = cancellation_cleanup.run_once(now)
    assert summary == {"cancelling_runs_cancelled": 0, "task_runs_cancelled": 1, "child_runs_cancelled": 1}
    for obj, state in [(running_task, State.CANCELLED), (done_task, State.COMPLETED), (child, State.CANCELLED),
                       (healthy, State.RUNNING), (healthy_task, State.RUNNING)]:
        obj.refresh_from_db()
        assert obj.state == state
    assert history(child)[-1][2:] == (Actor.CANCELLATION_CLEANUP, "Cancelled because its parent flow run is CANCELLED.")


def test_cancelling_run_whose_agent_is_gone_becomes_cancelled(flow, ws, ago, now):
    gone = factories.agent(ws, last_heartbeat=ago(3600), heartbeat_interval=30)
    alive = factories.agent(ws, last_heartbeat=ago(5), heartbeat_interval=30)
    abandoned = factories.flow_run(flow, State.CANCELLING, agent=gone, state_changed=ago(3600))
    abandoned_task = factories.task_run(abandoned, State.RUNNING)
    in_progress = factories.flow_run(flow, State.CANCELLING, agent=alive, state_changed=ago(3600))
    assert cancellation_cleanup.run_once(now)["cancelling_runs_cancelled"] == 1
    abandoned.refresh_from_db(), abandoned_task.refresh_from_db(), in_progress.refresh_from_db()
    assert (abandoned.state, abandoned_task.state, in_progress.state) == (
        State.CANCELLED, State.CANCELLED, State.CANCELLING)


def test_cancelling_run_whose_task_runs_still_beat_is_not_abandoned(flow, ago, now):
    # Its own heartbeat stopped an hour ago, but its task run beat a minute ago: its agent is
    # still there, finishing the cancellation.
    run = factories.flow_run(flow, State.CANCELLING, heartbeat_interval=30, last_heartbeat=ago(3600),
                             start_time=ago(7200), state_changed=ago(3600))
    factories.task_run(run, State.RUNNING, last_heartbeat=ago(60))
    assert cancellation_cleanup.run_once(now)["cancelling_runs_cancelled"] == 0
    run.refresh_from_db()
    assert run.state == State.CANCELLING
    # Nothing beats any more: past the 300 s threshold the cancellation is finished for it.
    assert cancellation_cleanup.run_once(now + timedelta(seconds=300))["cancelling_runs_cancelled"] == 1
    run.refresh_from_db()
    assert run.state == State.CANCELLED


# --- agent-monitor ---------------------------------------------------------------------------

def test_silent_agent_goes_offline_and_its_unstarted_runs_go_back_to_the_queue(flow, ws, other_ws, ago, now, flush_events):
    silent = factories.agent(ws, last_heartbeat=ago(91), heartbeat_interval=30)
    two_beats_missed = factories.agent(ws, last_heartbeat=ago(70), heartbeat_interval=30)
    elsewhere = factories.agent(other_ws, last_heartbeat=ago(5), heartbeat_interval=30)
    unstarted = factories.flow_run(flow, State.SUBMITTED, agent=silent)
    started = factories.flow_run(flow, State.RUNNING, agent=silent)
    assert agent_monitor.run_once(now) == {"agents_offline": 1, "runs_rescheduled": 1}
    assert [factories.Agent.objects.get(pk=a.pk).status for a in (silent, two_beats_missed, elsewhere)] == [
        AgentStatus.OFFLINE, AgentStatus.ONLINE, AgentStatus.ONLINE]
    unstarted.refresh_from_db(), started.refresh_from_db()
    assert (unstarted.state, unstarted.agent_id, started.state) == (State.SCHEDULED, None, State.RUNNING)
    assert history(unstarted)[0][2] == Actor.AGENT_MONITOR
    flush_events()
    assert Event.objects.filter(workspace=ws, name="agent.offline").count() == 1
    assert agent_monitor.run_once(now) == {"agents_offline": 0, "runs_rescheduled": 0}


# --- set-based: the cost of a pass does not grow with the rows it moves ------------------------

@pytest.mark.parametrize("count", [2, 25])
def test_pause_cancellation_and_agent_passes_cost_the_same_queries_for_2_or_25_rows(
        flow, ws, ago, now, count, django_assert_max_num_queries):
    for _ in range(count):
        factories.flow_run(flow, State.PAUSED, pause_expires_at=ago(1))
        parent = factories.flow_run(flow, State.CANCELLED)
        child = factories.flow_run(flow, State.RUNNING, parent_task_run=factories.task_run(parent, State.RUNNING))
        factories.task_run(child, State.COMPLETED)
        gone = factories.agent(ws, last_heartbeat=ago(3600))
        factories.flow_run(flow, State.SUBMITTED, agent=gone)
        factories.flow_run(flow, State.CANCELLING, agent=gone, state_changed=ago(3600))
    with django_assert_max_num_queries(10):
        assert pause_expirer.run_once(now) == {"runs_failed": count}
    with django_assert_max_num_queries(24):
        assert cancellation_cleanup.run_once(now) == {
            "cancelling_runs_cancelled": count, "task_runs_cancelled": count, "child_runs_cancelled": count}
    with django_assert_max_num_queries(16):
        assert agent_monitor.run_once(now) == {"agents_offline": count, "runs_rescheduled": count}
