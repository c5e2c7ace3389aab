"""The orchestration rules: every pair of states, stale writes, history, times, late completion."""

import itertools

import pytest

from events.models import Event
from runs.models import Actor, FlowRun, State, StateChange, TaskRun
from runs.states import (
    FLOW_RUN_TRANSITIONS,
    TASK_RUN_TRANSITIONS,
    IllegalTransition,
    StaleTransition,
    set_flow_run_state,
    set_task_run_state,
    transition_flow_runs,
    transition_task_runs,
)
from tests import factories

ALL_PAIRS = list(itertools.product(State.values, State.values))
TERMINAL = {State.COMPLETED, State.FAILED, State.CANCELLED, State.CRASHED}


@pytest.fixture
def flow(ws):
    return factories.flow(ws)


@pytest.mark.parametrize("from_state,to_state", ALL_PAIRS)
def test_flow_run_pair_is_applied_or_refused_by_the_rules(flow, from_state, to_state):
    run = factories.flow_run(flow, state=from_state)
    legal = to_state in FLOW_RUN_TRANSITIONS[from_state]
    if legal:
        set_flow_run_state(run, to_state, actor=Actor.SYSTEM, message="test")
        assert FlowRun.objects.get(pk=run.pk).state == to_state
        change = StateChange.objects.get(flow_run=run)
        assert (change.from_state, change.to_state, change.actor) == (from_state, to_state, Actor.SYSTEM)
    else:
        with pytest.raises(IllegalTransition) as raised:
            set_flow_run_state(run, to_state, actor=Actor.SYSTEM)
        assert from_state in str(raised.value) and to_state in str(raised.value)
        assert FlowRun.objects.get(pk=run.pk).state == from_state
        assert not StateChange.objects.filter(flow_run=run).exists()


@pytest.mark.parametrize("from_state,to_state", ALL_PAIRS)
def test_task_run_pair_is_applied_or_refused_by_the_rules(flow, from_state, to_state):
    task = factories.task_run(factories.flow_run(flow, state=State.RUNNING), state=from_state)
    legal = to_state in TASK_RUN_TRANSITIONS[from_state]
    if legal:
        set_task_run_state(task, to_state, actor=Actor.AGENT)
        assert TaskRun.objects.get(pk=task.pk).state == to_state
        assert StateChange.objects.filter(task_run=task, to_state=to_state).count() == 1
    else:
        with pytest.raises(IllegalTransition) as raised:
            set_task_run_state(task, to_state, actor=Actor.AGENT)
        assert from_state in str(raised.value) and to_state in str(raised.value)
        assert TaskRun.objects.get(pk=task.pk).state == from_state


def test_terminal_states_have_no_way_out_but_retry(flow):
    for state in TERMINAL:
        assert FLOW_RUN_TRANSITIONS[state] == set()
        run = factories.flow_run(flow, state=state)
        with pytest.raises(IllegalTransition, match="explicit retry"):
            set_flow_run_state(run, State.RUNNING, actor=Actor.AGENT)


def test_explicit_retry_reopens_a_failed_run(flow):
    run = factories.flow_run(flow, state=State.FAILED, end_time=factories.timezone.now())
    set_flow_run_state(run, State.SCHEDULED, actor=Actor.USER, retry=True, message="retry")
    run.refresh_from_db()
    assert run.state == State.SCHEDULED and run.end_time is None


def test_stale_transition_names_both_states_and_changes_nothing(flow):
    run = factories.flow_run(flow, state=State.RUNNING)
    seen_by_caller = FlowRun.objects.get(pk=run.pk)
    set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)  # the agent finished a moment ago
    with pytest.raises(StaleTransition) as raised:
        set_flow_run_state(seen_by_caller, State.CRASHED, actor=Actor.ZOMBIE_KILLER)
    assert "COMPLETED" in str(raised.value) and "RUNNING" in str(raised.value)
    assert raised.value.current == State.COMPLETED
    assert FlowRun.objects.get(pk=run.pk).state == State.COMPLETED
    assert StateChange.objects.filter(flow_run=run).count() == 1


def test_running_sets_start_time_once_and_counts_runs(flow):
    run = factories.flow_run(flow, state=State.SUBMITTED)
    run = set_flow_run_state(run, State.RUNNING, actor=Actor.AGENT)
    first_start = run.start_time
    assert first_start is not None and run.run_count == 1
    run = set_flow_run_state(run, State.PAUSED, actor=Actor.AGENT)
    run = set_flow_run_state(run, State.RUNNING, actor=Actor.AGENT)
    assert run.start_time == first_start and run.run_count == 2
    run = set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    assert run.end_time is not None and run.end_time >= first_start


def test_every_transition_emits_an_event_after_its_commit(flow, flush_events):
    run = factories.flow_run(flow, state=State.SCHEDULED)
    set_flow_run_state(run, State.LATE, actor=Actor.LATE_RUNS)
    assert not Event.objects.exists()  # nothing is written in the state change's transaction
    flush_events()
    event = Event.objects.get(resource__id=str(run.pk))
    assert event.name == "flow-run.state.late" and event.payload["actor"] == Actor.LATE_RUNS
    assert {"kind": "flow", "id": str(flow.pk)} in event.related


def test_agent_may_complete_a_run_a_recovery_service_failed(flow):
    run = factories.flow_run(flow, state=State.RUNNING)
    run = set_flow_run_state(run, State.CRASHED, actor=Actor.ZOMBIE_KILLER, message="heartbeat stopped")
    run = set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    assert run.state == State.COMPLETED
    last = StateChange.objects.filter(flow_run=run).last()
    assert "late COMPLETED" in last.message and "zombie-killer" in last.message


def test_agent_may_not_complete_a_run_a_user_failed(flow):
    run = factories.flow_run(flow, state=State.RUNNING)
    run = set_flow_run_state(run, State.FAILED, actor=Actor.USER)
    with pytest.raises(IllegalTransition):
        set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)


def test_bulk_transition_moves_only_legal_rows_in_constant_queries(flow, django_assert_max_num_queries):
    for _ in range(30):
        factories.flow_run(flow, state=State.SCHEDULED)
    finished = factories.flow_run(flow, state=State.COMPLETED)
    # The read, an UPDATE per from-state, the history, and the events' buffer (embedded mode: in the
    # same transaction, in a savepoint) or nothing (Redis: after the commit).
    with django_assert_max_num_queries(9):
        moved = transition_flow_runs(FlowRun.objects.all(), State.LATE, actor=Actor.LATE_RUNS,
                                     message=lambda row: f"late: {row['pk']}")
    assert len(moved) == 30
    assert FlowRun.objects.filter(state=State.LATE).count() == 30
    assert FlowRun.objects.get(pk=finished.pk).state == State.COMPLETED
    sample = FlowRun.objects.filter(state=State.LATE).first()
    assert sample.state_message == f"late: {sample.pk}"
    assert StateChange.objects.filter(actor=Actor.LATE_RUNS).count() == 30


def test_bulk_task_transition_sets_end_times(flow):
    run = factories.flow_run(flow, state=State.RUNNING)
    tasks = [factories.task_run(run, state=State.RUNNING) for _ in range(3)]
    moved = transition_task_runs(TaskRun.objects.filter(flow_run=run), State.FAILED, actor=Actor.ZOMBIE_KILLER,
                                 message='Marked "Failed" by a Zombie Killer process')
    assert len(moved) == 3
    for task in tasks:
        task.refresh_from_db()
        assert task.state == State.FAILED and task.end_time is not None
        assert task.state_message == 'Marked "Failed" by a Zombie Killer process'
