"""Counting: each task run's first COMPLETED counts once in its workspace's month (UTC), however the
reports repeat, race or are overturned, at the cost of one statement."""

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from runs import quota
from runs.models import Actor, State, TaskRun, TaskRunUsage
from runs.states import IllegalTransition, StaleTransition, set_task_run_state, transition_task_runs
from tests import factories

pytestmark = pytest.mark.django_db
UTC = dt_timezone.utc


def complete(task_run, now, **kw):
    return set_task_run_state(task_run, State.COMPLETED, actor=Actor.AGENT, now=now, **kw)


def test_a_task_run_that_completes_counts_once_in_its_workspace_month(ws, other_ws, running_run, now):
    complete(factories.task_run(running_run), now)
    assert quota.used(ws.pk, now) == 1
    assert quota.used(other_ws.pk, now) == 0


def test_failed_cancelled_and_crashed_task_runs_do_not_count(ws, running_run, now):
    for state in (State.FAILED, State.CANCELLED, State.CRASHED):
        set_task_run_state(factories.task_run(running_run), state, actor=Actor.AGENT, now=now)
    assert quota.used(ws.pk, now) == 0


def test_a_repeated_completed_report_is_refused_and_not_counted_again(ws, running_run, now):
    task_run = factories.task_run(running_run)
    stale_copy = TaskRun.objects.get(pk=task_run.pk)  # a retried report, loaded before the first landed
    complete(task_run, now)
    with pytest.raises(StaleTransition):
        complete(stale_copy, now)
    with pytest.raises(IllegalTransition):
        complete(TaskRun.objects.get(pk=task_run.pk), now)
    assert quota.used(ws.pk, now) == 1


def test_a_task_run_retried_after_completing_counts_once(ws, running_run, now):
    task_run = complete(factories.task_run(running_run), now)
    task_run = set_task_run_state(task_run, State.SCHEDULED, actor=Actor.AGENT, retry=True, now=now)
    task_run = set_task_run_state(task_run, State.RUNNING, actor=Actor.AGENT, now=now)
    complete(task_run, now + timedelta(minutes=1))
    assert TaskRun.objects.get(pk=task_run.pk).state == State.COMPLETED
    assert quota.used(ws.pk, now) == 1


def test_a_copy_loaded_before_another_completion_and_retry_moves_without_counting(ws, running_run, now):
    """The race the conditional flag closes: loaded RUNNING and uncounted, then (elsewhere) completed,
    counted, retried and RUNNING again; its COMPLETED still moves the run but does not count twice."""
    task_run = factories.task_run(running_run)
    early_copy = TaskRun.objects.get(pk=task_run.pk)
    complete(task_run, now)
    task_run = set_task_run_state(TaskRun.objects.get(pk=task_run.pk), State.RUNNING, actor=Actor.AGENT,
                                  retry=True, now=now)
    assert early_copy.state == State.RUNNING and not early_copy.quota_counted
    complete(early_copy, now)
    assert TaskRun.objects.get(pk=task_run.pk).state == State.COMPLETED
    assert quota.used(ws.pk, now) == 1


def test_a_late_completed_overturning_a_zombie_killer_verdict_counts_once(ws, running_run, now):
    task_run = factories.task_run(running_run)
    transition_task_runs(TaskRun.objects.filter(pk=task_run.pk), State.FAILED, actor=Actor.ZOMBIE_KILLER,
                         message='Marked "Failed" by a Zombie Killer process', now=now)
    assert quota.used(ws.pk, now) == 0
    done = complete(TaskRun.objects.get(pk=task_run.pk), now + timedelta(minutes=3))
    assert done.state == State.COMPLETED
    assert quota.used(ws.pk, now) == 1


def test_completions_count_in_their_calendar_month_in_utc(ws, running_run):
    last_second = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    first_second = datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)
    # New Year in Berlin, still December in UTC.
    berlin_new_year = datetime(2027, 1, 1, 0, 30, tzinfo=dt_timezone(timedelta(hours=1)))
    complete(factories.task_run(running_run), last_second)
    complete(factories.task_run(running_run), berlin_new_year)
    complete(factories.task_run(running_run), first_second)
    assert quota.used(ws.pk, last_second) == 2
    assert quota.used(ws.pk, first_second) == 1
    assert quota.resets_at(last_second) == first_second
    assert quota.resets_at(datetime(2026, 2, 10, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)
    assert quota.month_of(berlin_new_year).isoformat() == "2026-12-01"


def test_many_completions_spread_over_shards_and_sum_exactly(ws, running_run, now):
    for _ in range(40):
        complete(factories.task_run(running_run), now)
    rows = TaskRunUsage.objects.filter(workspace=ws)
    assert rows.count() > 1  # spread: completions at once rarely wait for one another's counter row
    assert quota.used(ws.pk, now) == 40


def test_the_set_based_move_counts_only_the_uncounted_in_one_statement(ws, other_ws, now):
    runs = [factories.flow_run(factories.flow(w), State.RUNNING) for w in (ws, other_ws)]
    fresh = [factories.task_run(runs[i % 2]) for i in range(6)]
    counted_before = factories.task_run(runs[0], quota_counted=True)
    moved = transition_task_runs(TaskRun.objects.filter(pk__in=[t.pk for t in [*fresh, counted_before]]),
                                 State.COMPLETED, actor=Actor.AGENT, now=now)
    assert len(moved) == 7
    assert quota.used(ws.pk, now) == 3 and quota.used(other_ws.pk, now) == 3
    assert TaskRun.objects.filter(quota_counted=True).count() == 7


def queries_of(move):
    with CaptureQueriesContext(connection) as captured:
        move()
    return len(captured)


def test_the_set_based_move_costs_the_same_queries_for_few_or_many(ws, now):
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    few = [factories.task_run(run) for _ in range(2)]
    many = [factories.task_run(run) for _ in range(30)]
    cost = [queries_of(lambda ids=[t.pk for t in batch]: transition_task_runs(
        TaskRun.objects.filter(pk__in=ids), State.COMPLETED, actor=Actor.AGENT, now=now)) for batch in (few, many)]
    assert cost[0] == cost[1]
    assert quota.used(ws.pk, now) == 32


def test_counting_costs_one_statement_more_than_failing(ws, running_run, now):
    """The hot path's price: the flag rides on the state UPDATE; the count is one upsert."""
    def loaded(task_run):  # as the agent endpoint loads it
        return TaskRun.objects.select_related("flow_run").get(pk=task_run.pk)

    doomed, first = loaded(factories.task_run(running_run)), loaded(factories.task_run(running_run))
    failing = queries_of(lambda: set_task_run_state(doomed, State.FAILED, actor=Actor.AGENT, now=now))
    assert queries_of(lambda: complete(first, now)) == failing + 1
    # Already counted (a retry completing again): not even that.
    set_task_run_state(loaded(first), State.RUNNING, actor=Actor.AGENT, retry=True, now=now)
    again = loaded(first)
    assert queries_of(lambda: complete(again, now)) == failing
    assert quota.used(ws.pk, now) == 1
