"""A task run's own page: facts, its history and its log lines; scoped like its run."""

import pytest

from runs.models import Actor, Log, LogLevel, State, StateChange
from tests import factories

pytestmark = pytest.mark.django_db


def test_the_task_run_page_shows_its_history_and_only_its_logs(as_viewer, ws, django_assert_max_num_queries):
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    task = factories.task_run(run, State.FAILED, task_key="load", max_retries=2, run_count=3)
    other = factories.task_run(run, State.COMPLETED, task_key="extract")
    StateChange.objects.create(flow_run=run, task_run=task, from_state=State.RUNNING, to_state=State.FAILED,
                               actor=Actor.ZOMBIE_KILLER, message='Marked "Failed" by a Zombie Killer process')
    Log.objects.create(workspace=ws, flow_run=run, task_run=task, level=LogLevel.ERROR, message="disk full")
    Log.objects.create(workspace=ws, flow_run=run, task_run=other, message="extract line")
    with django_assert_max_num_queries(12):
        page = as_viewer.get(f"/dashboard/task-runs/{task.pk}/")
    html = page.content.decode()
    assert "disk full" in html and "extract line" not in html
    assert "Zombie Killer" in html and "3 of at most 3" in html
    assert f'href="/dashboard/task-runs/{task.pk}/"' in as_viewer.get(f"/dashboard/runs/{run.pk}/").content.decode()


def test_a_task_run_of_another_workspace_is_not_found(as_viewer, other_ws):
    task = factories.task_run(factories.flow_run(factories.flow(other_ws)))
    assert as_viewer.get(f"/dashboard/task-runs/{task.pk}/").status_code == 404
