"""Query counts do not grow with rows: every page costs the same with 3 runs or with 120."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Actor, FlowRun, Log, State, StateChange, TaskRun
from runs.scheduling import schedule_future_runs
from tests import factories

pytestmark = pytest.mark.django_db

STATES = [State.RUNNING, State.COMPLETED, State.LATE, State.FAILED, State.CRASHED, State.SUBMITTED]


def seed(ws, runs):
    """`runs` flow runs over the last few hours across flows, queues and agents, with recovery logs."""
    now = timezone.now()
    flows = [factories.flow(ws) for _ in range(3)]
    queues = [factories.work_queue(ws, last_polled=now) for _ in range(3)]
    for i in range(3):
        factories.agent(ws, last_heartbeat=now).queues.add(*queues)
        schedule_future_runs([factories.schedule(flows[i])], now)
    rows = []
    agent = ws.agents.order_by("pk").first()
    for i in range(runs):
        start = now - timedelta(minutes=3 * i + 5)
        state = STATES[i % len(STATES)]
        rows.append(FlowRun(
            workspace=ws, flow=flows[i % 3], work_queue=queues[i % 3], state=state, name=f"run-{i}",
            scheduled_start=start, start_time=None if state == State.LATE else start,
            end_time=start + timedelta(minutes=2) if state in (State.COMPLETED, State.FAILED, State.CRASHED) else None,
            last_heartbeat=now - timedelta(seconds=i) if state == State.RUNNING else None,
            agent=agent,
        ))
    FlowRun.objects.bulk_create(rows)
    Log.objects.bulk_create(Log(workspace=ws, flow_run=r, source="lazarus", message="rescheduled") for r in rows)
    StateChange.objects.bulk_create(StateChange(flow_run=r, from_state=State.RUNNING, to_state=State.CRASHED,
                                                actor=Actor.ZOMBIE_KILLER) for r in rows)
    return rows


def page_urls(run):
    return ["/dashboard/", "/dashboard/timeline/?hours=24", f"/dashboard/runs/{run.pk}/", "/dashboard/schedules/",
            "/dashboard/agents/", "/dashboard/recovery/", "/dashboard/runs/", "/dashboard/runs/?state=FAILED&q=run",
            "/dashboard/timeline/?window=10080&group=queue", f"/dashboard/agents/{run.agent_id or 0}/",
            "/dashboard/schedules/new/"]


PAGES = 11
# The runs list counts each of the ten states on its own, capped (runs/dashboard/runs_list.py).
BUDGETS = {6: 24, 7: 24}


@pytest.mark.parametrize("page", range(PAGES))
def test_each_page_costs_a_fixed_number_of_queries(client, ws, django_assert_max_num_queries, page):
    from runs.models import Role

    client.force_login(factories.member(ws, role=Role.ADMIN))  # admin: the schedule form too
    as_operator = client
    small = seed(ws, 3)
    url = page_urls(small[0])[page]
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        assert as_operator.get(url).status_code == 200
    # Session, user and role lookups included: a page is a handful of queries, not one per row.
    assert len(few.captured_queries) <= BUDGETS.get(page, 16)
    run = seed(ws, 120)[0]
    TaskRun.objects.bulk_create(TaskRun(flow_run=run, task_key=f"t{i}", state=State.COMPLETED) for i in range(50))
    Log.objects.bulk_create(Log(workspace=ws, flow_run=run, message=f"line {i}") for i in range(50))
    url = page_urls(run)[page] if page == 2 else url
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert as_operator.get(url).status_code == 200
