"""A run's attempts and its recovery story, from its state history."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.dashboard.attempts import attempts_of, recovery_story
from runs.models import Actor, Log, State, StateChange
from tests import factories

pytestmark = pytest.mark.django_db


def change(run, from_state, to_state, actor, at, message="", agent=None):
    return StateChange.objects.create(flow_run=run, from_state=from_state, to_state=to_state, actor=actor,
                                      timestamp=at, message=message, agent=agent)


@pytest.fixture
def rescheduled_run(ws):
    """Made, claimed by box-1, silent, rescheduled by Lazarus; claimed by box-2, completed."""
    t0 = timezone.now() - timedelta(hours=1)
    run = factories.flow_run(factories.flow(ws), State.COMPLETED, created=t0, auto_scheduled=True)
    box1, box2 = factories.agent(ws, name="box-1"), factories.agent(ws, name="box-2")
    change(run, "", State.SCHEDULED, Actor.SCHEDULER, t0)
    change(run, State.SCHEDULED, State.SUBMITTED, Actor.AGENT, t0 + timedelta(minutes=1), agent=box1)
    change(run, State.SUBMITTED, State.RUNNING, Actor.AGENT, t0 + timedelta(minutes=2), agent=box1)
    why = "Rescheduled by Lazarus (attempt 1 of 10): no task run was SUBMITTED or RUNNING for 612 s."
    change(run, State.RUNNING, State.SCHEDULED, Actor.LAZARUS, t0 + timedelta(minutes=20), message=why)
    Log.objects.create(workspace=ws, flow_run=run, source="lazarus", message=why, timestamp=t0 + timedelta(minutes=20))
    change(run, State.SCHEDULED, State.SUBMITTED, Actor.AGENT, t0 + timedelta(minutes=21), agent=box2)
    change(run, State.SUBMITTED, State.RUNNING, Actor.AGENT, t0 + timedelta(minutes=22), agent=box2)
    change(run, State.RUNNING, State.COMPLETED, Actor.AGENT, t0 + timedelta(minutes=30), agent=box2)
    first = factories.task_run(run, State.COMPLETED, task_key="extract", start_time=t0 + timedelta(minutes=3))
    second = factories.task_run(run, State.COMPLETED, task_key="load", start_time=t0 + timedelta(minutes=23))
    return run, t0, (first, second)


def test_each_return_to_scheduled_starts_an_attempt_with_its_agent_and_task_runs(rescheduled_run):
    run, t0, (first, second) = rescheduled_run
    history = list(run.history.filter(task_run__isnull=True).order_by("timestamp"))
    attempts = attempts_of(run, history, [first, second])
    assert [a.number for a in attempts] == [1, 2]
    one, two = attempts
    assert one.agent.name == "box-1" and two.agent.name == "box-2"
    assert one.outcome == State.RUNNING and one.ended_by.actor == Actor.LAZARUS
    assert two.outcome == State.COMPLETED and two.end is None
    assert one.task_runs == [first] and two.task_runs == [second]
    assert one.end == two.start == t0 + timedelta(minutes=20)


def test_a_run_never_rescheduled_has_one_attempt(ws):
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    change(run, "", State.SCHEDULED, Actor.USER, run.created)
    change(run, State.SCHEDULED, State.RUNNING, Actor.AGENT, run.created + timedelta(seconds=5))
    attempts = attempts_of(run, list(run.history.order_by("timestamp")))
    assert len(attempts) == 1 and attempts[0].outcome == State.RUNNING and attempts[0].end is None


def test_the_recovery_story_tells_each_act_once_with_its_reason(rescheduled_run, ws):
    run, t0, _ = rescheduled_run
    Log.objects.create(workspace=ws, flow_run=run, source="zombie-killer", message="task load: no heartbeat",
                       timestamp=t0 + timedelta(minutes=25))
    history = list(run.history.order_by("timestamp"))
    story = recovery_story(history, list(run.logs.filter(source__in=["lazarus", "zombie-killer"])))
    assert [(who, transition) for _, who, transition, _ in story] == [
        ("Lazarus", "RUNNING → SCHEDULED"), ("Zombie Killer", "")]
    assert story[0][3].startswith("Rescheduled by Lazarus (attempt 1 of 10)")


def test_the_run_page_shows_each_attempt_apart_and_the_story(as_viewer, rescheduled_run, ws):
    run, t0, (first, second) = rescheduled_run
    Log.objects.create(workspace=ws, flow_run=run, message="first attempt line", timestamp=t0 + timedelta(minutes=5))
    Log.objects.create(workspace=ws, flow_run=run, message="second attempt line", timestamp=t0 + timedelta(minutes=25))
    page = as_viewer.get(f"/dashboard/runs/{run.pk}/")
    html = page.content.decode()
    assert len(page.context["attempts"]) == 2 and page.context["attempt"] is None
    assert "Recovery story" in html and "Rescheduled by Lazarus (attempt 1 of 10)" in html
    assert "first attempt line" in html and "second attempt line" in html
    one = as_viewer.get(f"/dashboard/runs/{run.pk}/?attempt=1")
    assert [row["task"].task_key for row in one.context["gantt"]] == ["extract"]
    lines = one.content.decode()
    assert "first attempt line" in lines and "second attempt line" not in lines
    assert "attempt=1" in one.context["filter_query"]
    paged = as_viewer.get(f"/dashboard/runs/{run.pk}/logs/?attempt=2").content.decode()
    assert "second attempt line" in paged and "first attempt line" not in paged
    assert as_viewer.get(f"/dashboard/runs/{run.pk}/?attempt=9").context["attempt"] is None  # no such attempt
