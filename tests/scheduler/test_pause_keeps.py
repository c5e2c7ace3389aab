"""A pause says which of the schedule's runs it leaves alone: started runs finish, manual runs
and runs already due wait; only future auto-scheduled runs that have not started are deleted."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import FlowRun, Role, State
from runs.scheduling import runs_that_stay
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def schedule_with_runs(ws):
    flow = factories.flow(ws)
    schedule = factories.schedule(flow, interval_seconds=60)
    now = timezone.now()
    common = {"schedule": schedule, "schedule_slug": schedule.slug}
    factories.flow_run(flow, State.RUNNING, auto_scheduled=True, scheduled_start=now - timedelta(minutes=3), **common)
    factories.flow_run(flow, State.SUBMITTED, auto_scheduled=True, scheduled_start=now - timedelta(minutes=2), **common)
    factories.flow_run(flow, State.SCHEDULED, auto_scheduled=False, scheduled_start=now + timedelta(hours=1), **common)
    factories.flow_run(flow, State.LATE, auto_scheduled=True, scheduled_start=now - timedelta(minutes=1), **common)
    for minutes in (5, 10, 15):
        factories.flow_run(flow, State.SCHEDULED, auto_scheduled=True, scheduled_start=now + timedelta(minutes=minutes),
                           **common)
    factories.flow_run(flow, State.COMPLETED, auto_scheduled=True, scheduled_start=now - timedelta(hours=1), **common)
    return schedule


def test_runs_that_stay_counts_started_manual_and_due_runs(schedule_with_runs):
    assert runs_that_stay(schedule_with_runs) == {"running": 2, "manual": 1, "due": 1}


def test_the_api_pause_answer_says_which_runs_stay_and_they_do(api, key_for, prefix, schedule_with_runs):
    client = api.as_key(key_for(Role.OPERATOR))
    answer = client.post(f"{prefix}/schedules/{schedule_with_runs.pk}/pause/").json()
    assert answer["runs_deleted"] == 3
    assert answer["runs_kept"] == {"running": 2, "manual": 1, "due": 1}
    left = FlowRun.objects.filter(schedule=schedule_with_runs).exclude(state=State.COMPLETED)
    assert left.count() == 4


def test_the_dashboard_pause_step_names_the_runs_that_stay(client, ws, schedule_with_runs):
    client.force_login(factories.member(ws, role=Role.OPERATOR))
    html = client.get(f"/dashboard/schedules/{schedule_with_runs.pk}/pause/").content.decode()
    assert '<strong class="to-delete">3</strong>' in html
    assert "<strong>2</strong> started runs (they finish)" in html
    assert "<strong>1</strong> manual run waiting" in html and "<strong>1</strong> run already due" in html
