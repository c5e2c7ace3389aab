"""The schedules page: pause after a confirm step, resume, run now; only operators and admins act."""

import pytest
from django.utils import timezone

from runs.models import FlowRun, Role, ScheduleStatus
from runs.scheduling import schedule_future_runs
from tests import factories

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def hourly(ws):
    schedule = factories.schedule(factories.flow(ws, name="hourly-report"), slug="hourly")
    schedule_future_runs([schedule], timezone.now())
    return schedule


def test_list_shows_kind_description_next_fire_times_and_an_active_toggle(as_operator, hourly):
    page = as_operator.get("/dashboard/schedules/")
    row = page.context["rows"][0]
    assert row["description"] == hourly.describe() and len(row["next_times"]) == 3
    html = page.content.decode()
    assert 'role="switch" aria-checked="true"' in html and "ACTIVE" in html and "Interval" in html


def test_pause_first_says_how_many_future_runs_it_deletes_and_deletes_nothing_yet(as_operator, hourly):
    assert FlowRun.objects.filter(schedule=hourly).count() == 10
    row = as_operator.get(f"/dashboard/schedules/{hourly.pk}/pause/", **HTMX)
    html = row.content.decode()
    assert html.lstrip().startswith(f'<tr id="schedule-{hourly.pk}"')
    assert 'class="to-delete">10</strong> future runs' in html
    hourly.refresh_from_db()
    assert hourly.status == ScheduleStatus.ACTIVE and FlowRun.objects.filter(schedule=hourly).count() == 10


def test_confirmed_pause_flips_the_toggle_and_deletes_future_runs(as_operator, hourly):
    row = as_operator.post(f"/dashboard/schedules/{hourly.pk}/pause/", **HTMX)
    assert 'aria-checked="false"' in row.content.decode() and "PAUSED" in row.content.decode()
    hourly.refresh_from_db()
    assert hourly.status == ScheduleStatus.PAUSED
    assert FlowRun.objects.filter(schedule=hourly).count() == 0


def test_resume_flips_back_and_recreates_the_next_runs(as_operator, hourly):
    as_operator.post(f"/dashboard/schedules/{hourly.pk}/pause/", **HTMX)
    row = as_operator.post(f"/dashboard/schedules/{hourly.pk}/resume/", **HTMX)
    assert 'aria-checked="true"' in row.content.decode()
    hourly.refresh_from_db()
    assert hourly.status == ScheduleStatus.ACTIVE and FlowRun.objects.filter(schedule=hourly).count() == 10


def test_without_javascript_the_confirm_step_is_a_page_and_the_pause_redirects(as_operator, hourly):
    confirm = as_operator.get(f"/dashboard/schedules/{hourly.pk}/pause/")
    assert "<html" in confirm.content.decode() and "10</strong> future runs" in confirm.content.decode()
    response = as_operator.post(f"/dashboard/schedules/{hourly.pk}/pause/")
    assert response.status_code == 302 and response["Location"] == "/dashboard/schedules/"


def test_keep_active_leaves_the_confirm_step_unchanged(as_operator, hourly):
    row = as_operator.get(f"/dashboard/schedules/{hourly.pk}/keep/", **HTMX).content.decode()
    assert 'aria-checked="true"' in row and "to-delete" not in row


def test_run_now_makes_a_manual_run_by_the_user_and_opens_it(as_operator, operator, hourly):
    response = as_operator.post(f"/dashboard/schedules/{hourly.pk}/run/")
    run = FlowRun.objects.get(auto_scheduled=False)
    assert response["Location"] == f"/dashboard/runs/{run.pk}/"
    assert run.created_by == operator and run.schedule == hourly


def test_viewers_see_the_status_but_cannot_pause_resume_or_run(as_viewer, hourly):
    html = as_viewer.get("/dashboard/schedules/").content.decode()
    assert 'role="switch"' not in html and "ACTIVE" in html
    assert as_viewer.get(f"/dashboard/schedules/{hourly.pk}/pause/").status_code == 403
    assert as_viewer.post(f"/dashboard/schedules/{hourly.pk}/pause/").status_code == 403
    assert as_viewer.post(f"/dashboard/schedules/{hourly.pk}/resume/").status_code == 403
    assert as_viewer.post(f"/dashboard/schedules/{hourly.pk}/run/").status_code == 403
    hourly.refresh_from_db()
    assert hourly.status == ScheduleStatus.ACTIVE


def test_schedules_of_other_workspaces_are_not_found(client, other_ws, hourly):
    stranger = factories.member(other_ws, role=Role.ADMIN)
    client.force_login(stranger)
    assert client.get("/dashboard/schedules/").context["rows"] == []
    assert client.post(f"/dashboard/schedules/{hourly.pk}/pause/").status_code == 404


def test_pause_needs_the_csrf_token(operator, hourly):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    assert strict.post(f"/dashboard/schedules/{hourly.pk}/pause/", **HTMX).status_code == 403
