"""Queues and agents from the dashboard: pause/resume a queue and set its limit (operators,
audited), an agent's page with its current and recent runs and its health."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import AuditEntry, State, WorkQueue
from tests import factories

pytestmark = pytest.mark.django_db


def test_an_operator_pauses_and_resumes_a_queue_and_each_is_audited(as_operator, ws):
    queue = factories.work_queue(ws, name="gpu")
    answer = as_operator.post(f"/dashboard/queues/{queue.pk}/pause/")
    assert answer.status_code == 302 and answer["Location"] == "/dashboard/agents/"
    assert WorkQueue.objects.get(pk=queue.pk).paused
    page = as_operator.get("/dashboard/agents/").content.decode()
    assert "Paused queue gpu" in page and "Resume <span" in page
    as_operator.post(f"/dashboard/queues/{queue.pk}/resume/")
    assert not WorkQueue.objects.get(pk=queue.pk).paused
    assert list(AuditEntry.objects.filter(target_id=str(queue.pk)).order_by("id").values_list("action", flat=True)) \
        == ["work_queue.pause", "work_queue.resume"]


def test_an_operator_sets_and_clears_a_limit_and_bad_input_names_the_field(as_operator, ws):
    queue = factories.work_queue(ws, name="gpu")
    as_operator.post(f"/dashboard/queues/{queue.pk}/limit/", {"concurrency_limit": "4"})
    assert WorkQueue.objects.get(pk=queue.pk).concurrency_limit == 4
    assert "2 / 4" not in as_operator.get("/dashboard/agents/").content.decode()  # none in use
    as_operator.post(f"/dashboard/queues/{queue.pk}/limit/", {"concurrency_limit": ""})
    assert WorkQueue.objects.get(pk=queue.pk).concurrency_limit is None
    for bad in ("-1", "four", "²", "9" * 40):
        as_operator.post(f"/dashboard/queues/{queue.pk}/limit/", {"concurrency_limit": bad})
        assert WorkQueue.objects.get(pk=queue.pk).concurrency_limit is None
    assert "concurrency_limit of gpu" in as_operator.get("/dashboard/agents/").content.decode()


def test_a_viewer_sees_no_controls_and_is_refused_with_the_role_named(as_viewer, ws):
    queue = factories.work_queue(ws, name="gpu")
    assert "operators only" in as_viewer.get("/dashboard/agents/").content.decode()
    refused = as_viewer.post(f"/dashboard/queues/{queue.pk}/pause/")
    assert refused.status_code == 403 and "need the operator role" in refused.content.decode()
    assert not WorkQueue.objects.get(pk=queue.pk).paused


def test_another_workspaces_queue_is_not_found(as_operator, other_ws):
    queue = factories.work_queue(other_ws, name="theirs")
    assert as_operator.post(f"/dashboard/queues/{queue.pk}/pause/").status_code == 404


def test_the_agent_page_shows_its_health_current_and_recent_runs(as_operator, ws, django_assert_max_num_queries):
    now = timezone.now()
    agent = factories.agent(ws, name="box-1", last_heartbeat=now - timedelta(seconds=10), labels={"gpu": "a100"})
    other = factories.agent(ws, name="box-2")
    flow = factories.flow(ws, name="etl")
    factories.flow_run(flow, State.RUNNING, agent=agent, name="running-now")
    factories.flow_run(flow, State.COMPLETED, agent=agent, name="done-today", scheduled_start=now - timedelta(hours=3))
    factories.flow_run(flow, State.COMPLETED, agent=agent, name="done-long-ago", scheduled_start=now - timedelta(days=30))
    factories.flow_run(flow, State.RUNNING, agent=other, name="someone-elses")
    with django_assert_max_num_queries(10):
        page = as_operator.get(f"/dashboard/agents/{agent.pk}/")
    assert [r.name for r in page.context["current"]] == ["running-now"]
    assert [r.name for r in page.context["recent"]] == ["done-today"]
    assert page.context["healthy"]
    html = page.content.decode()
    assert "gpu=a100" in html and "healthy" in html
    assert f'href="/dashboard/agents/{agent.pk}/"' in as_operator.get("/dashboard/agents/").content.decode()


def test_an_agent_of_another_workspace_is_not_found(as_operator, other_ws):
    assert as_operator.get(f"/dashboard/agents/{factories.agent(other_ws).pk}/").status_code == 404
