"""Lazarus reschedules flow runs whose node died, says so in their logs, and gives up after 10 tries."""

import pytest

from runs.models import Actor, FlowRun, Log, State
from services import lazarus
from tests import factories
from tests.recovery.conftest import history

pytestmark = pytest.mark.django_db


@pytest.fixture
def stuck(flow, ws, ago):
    """stuck(**fields) -> a RUNNING flow run silent for 20 minutes, whose last task run finished long ago."""
    agent = factories.agent(ws, last_heartbeat=ago(1200))

    def make(state=State.RUNNING, **kw):
        fields = {"start_time": ago(3600), "last_heartbeat": ago(1200), "heartbeat_interval": 30, "agent": agent,
                  "state_changed": ago(3600), **kw}
        run = factories.flow_run(kw.pop("flow", flow), state, **fields)
        factories.task_run(run, State.COMPLETED, state_changed=ago(1200))
        return run

    return make


def test_silent_running_run_without_active_tasks_is_rescheduled_and_logged(stuck, now):
    run = stuck()
    assert lazarus.run_once(now) == {"rescheduled": 1, "failed": 0}
    run.refresh_from_db()
    assert (run.state, run.lazarus_count, run.agent_id, run.scheduled_start) == (State.SCHEDULED, 1, None, now)
    assert run.last_heartbeat is None and run.start_time is None
    [(old, new, actor, message)] = history(run)
    assert (old, new, actor) == (State.RUNNING, State.SCHEDULED, Actor.LAZARUS)
    assert "attempt 1 of 10" in message and "no progress for 600 s" in message
    log = Log.objects.get(flow_run=run)
    assert log.source == "lazarus" and log.message == message


def test_submitted_run_that_never_started_is_rescheduled(stuck, ago, now):
    run = stuck(State.SUBMITTED, start_time=None, last_heartbeat=None, state_changed=ago(11 * 60))
    young = stuck(State.SUBMITTED, start_time=None, last_heartbeat=None, state_changed=ago(60))
    lazarus.run_once(now)
    run.refresh_from_db(), young.refresh_from_db()
    assert (run.state, young.state) == (State.SCHEDULED, State.SUBMITTED)
    assert "submitted but not started within 600 s" in Log.objects.get(flow_run=run).message


def test_runs_that_are_alive_or_busy_are_left_alone(stuck, ws, ago, now):
    busy = stuck()
    factories.task_run(busy, State.RUNNING, last_heartbeat=ago(1200))
    beating = stuck(last_heartbeat=ago(10))
    just_progressed = stuck()
    factories.task_run(just_progressed, State.COMPLETED, state_changed=ago(30))
    quiet_but_agent_alive = stuck(heartbeat_interval=None, last_heartbeat=None,
                                  agent=factories.agent(ws, last_heartbeat=ago(5)))
    assert lazarus.run_once(now) == {"rescheduled": 0, "failed": 0}
    assert set(FlowRun.objects.values_list("state", flat=True)) == {State.RUNNING}
    assert not Log.objects.exists()
    assert all(r.lazarus_count == 0 for r in (busy, beating, just_progressed, quiet_but_agent_alive))


def test_terminal_paused_scheduled_and_other_workspace_runs_are_left_alone(stuck, other_ws, paused_schedule_flow, ago,
                                                                          now):
    sched_flow, sched = paused_schedule_flow
    states = [State.COMPLETED, State.FAILED, State.PAUSED, State.CANCELLING]
    runs = [stuck(state) for state in states]
    runs.append(stuck(State.SCHEDULED, flow=sched_flow, schedule=sched))
    other = factories.flow_run(factories.flow(other_ws), State.RUNNING, start_time=ago(3600),
                               last_heartbeat=ago(5), heartbeat_interval=30, state_changed=ago(3600))
    assert lazarus.run_once(now) == {"rescheduled": 0, "failed": 0}
    for run, state in zip(runs + [other], states + [State.SCHEDULED, State.RUNNING]):
        run.refresh_from_db()
        assert (run.state, run.lazarus_count) == (state, 0)


def test_the_eleventh_attempt_fails_the_run_with_a_message(stuck, ago, now):
    run = stuck()
    for attempt in range(1, 12):
        lazarus.run_once(now)
        run.refresh_from_db()
        if attempt <= 10:
            assert (run.state, run.lazarus_count) == (State.SCHEDULED, attempt)
            # An agent claims it again and the node dies again (set directly: the test's own fault).
            FlowRun.objects.filter(pk=run.pk).update(state=State.RUNNING, state_changed=ago(3600),
                                                     last_heartbeat=ago(1200), start_time=ago(3600))
    assert (run.state, run.lazarus_count) == (State.FAILED, 10)
    assert "attempt 11 exceeds the limit of 10 reschedules" in run.state_message
    assert history(run)[-1][1:3] == (State.FAILED, Actor.LAZARUS)
    assert Log.objects.filter(flow_run=run, source="lazarus").count() == 11


@pytest.mark.parametrize("count", [2, 25])
def test_a_pass_costs_the_same_queries_for_2_or_25_runs(stuck, now, count, django_assert_max_num_queries):
    for i in range(count):
        stuck(lazarus_count=10 if i % 2 else 0)
    with django_assert_max_num_queries(22):
        summary = lazarus.run_once(now)
    assert summary == {"rescheduled": count - count // 2, "failed": count // 2}


def test_stuck_runs_of_one_schedule_are_rescheduled_together_and_keep_their_slots(flow, ws, ago, now):
    """Issue #11, item 1: overlapping runs of one schedule die with their node; one pass reschedules all.

    Each run keeps the fire time it was made for (its identity); only when its next attempt is due
    changes. The pass used to give every run the same new start, the same unique key, and failed.
    """
    schedule = factories.schedule(flow, slug="every-minute")
    agent = factories.agent(ws, last_heartbeat=ago(1200))
    slots = [ago(3600), ago(3540), ago(3480)]
    runs = [factories.flow_run(flow, State.RUNNING, schedule=schedule, schedule_slug=schedule.slug,
                               auto_scheduled=True, scheduled_start=slot, start_time=slot, last_heartbeat=ago(1200),
                               heartbeat_interval=30, agent=agent, state_changed=slot) for slot in slots]
    manual = factories.flow_run(flow, State.RUNNING, start_time=ago(3600), last_heartbeat=ago(1200),
                                heartbeat_interval=30, agent=agent, state_changed=ago(3600))

    assert lazarus.run_once(now) == {"rescheduled": 4, "failed": 0}

    for run, slot in zip(runs, slots):
        run.refresh_from_db()
        assert (run.state, run.slot, run.scheduled_start, run.lazarus_count) == (State.SCHEDULED, slot, now, 1)
    manual.refresh_from_db()
    assert (manual.state, manual.slot) == (State.SCHEDULED, None)


def test_a_row_the_database_refuses_does_not_keep_the_others_stuck(stuck, now):
    """One bad row fails alone: the rest of the batch moves and the pass succeeds."""
    from django.db import connection

    runs = [stuck() for _ in range(3)]
    bad = runs[1]
    table = FlowRun._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"""CREATE FUNCTION refuse_bad_run() RETURNS trigger AS $$
                BEGIN IF NEW.id = '{bad.pk}' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;
                RETURN NEW; END $$ LANGUAGE plpgsql""")
            cursor.execute(f"CREATE TRIGGER refuse_bad_run BEFORE UPDATE ON {table} "
                           "FOR EACH ROW EXECUTE FUNCTION refuse_bad_run()")
        else:
            cursor.execute(f"CREATE TRIGGER refuse_bad_run BEFORE UPDATE ON {table} "
                           f"WHEN NEW.id = '{bad.pk.hex}' BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")

    assert lazarus.run_once(now) == {"rescheduled": 2, "failed": 0}

    states = {run.pk: FlowRun.objects.get(pk=run.pk).state for run in runs}
    assert states == {runs[0].pk: State.SCHEDULED, bad.pk: State.RUNNING, runs[2].pk: State.SCHEDULED}
    assert not Log.objects.filter(flow_run=bad).exists()
    assert history(bad) == []


def test_a_pass_where_every_row_fails_is_recorded_as_failed_not_as_a_quiet_success(stuck, now):
    """A global failure (here: the history table refuses every write) is not one bad row: the pass fails."""
    from unittest import mock

    from django.db import DatabaseError

    from runs.models import StateChange
    from services import towel
    from services.models import ServicePass

    runs = [stuck() for _ in range(3)]
    with mock.patch.object(StateChange.objects, "bulk_create", side_effect=DatabaseError("history table is full")):
        summary = towel.run("lazarus", now=now)

    assert "history table is full" in summary["error"]
    assert not ServicePass.objects.get(service="lazarus").ok
    assert {FlowRun.objects.get(pk=run.pk).state for run in runs} == {State.RUNNING}
