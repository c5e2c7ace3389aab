"""What an ops user notices first: whose role they hold, why an action is refused, counts that
match the data, a recovery review that tells each act once and says when a recovery service
itself is failing, times to the second in the admin, a favicon."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from runs.models import Actor, Log, LogLevel, Membership, Role, State, StateChange
from services.models import ServicePass
from tests import factories

pytestmark = pytest.mark.django_db


def test_the_header_names_the_users_role_in_each_workspace(client, ws, other_ws):
    person = factories.member(ws, role=Role.OPERATOR)
    Membership.objects.create(user=person, workspace=other_ws, role=Role.VIEWER)
    client.force_login(person)
    html = client.get("/dashboard/").content.decode()
    assert f"operator · {ws.account.slug}/{ws.slug}" in html
    assert f"viewer · {other_ws.account.slug}/{other_ws.slug}" in html


def test_a_platform_admin_is_admin_of_every_workspace_in_the_header(client, db):
    admin = get_user_model().objects.create_superuser("root-1", password="pw-for-tests-123")
    client.force_login(admin)
    assert "admin · every workspace" in client.get("/dashboard/").content.decode()


def test_a_refused_action_gets_a_page_that_names_the_role_it_needs_and_the_users_role(as_viewer, ws):
    schedule = factories.schedule(factories.flow(ws))
    response = as_viewer.post(f"/dashboard/schedules/{schedule.pk}/pause/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "need the operator role in this workspace" in html
    assert f"<strong>viewer</strong> in {ws.account.slug}/{ws.slug}" in html
    assert 'href="/dashboard/"' in html  # the way back, in the dashboard's own frame


def test_favicon_is_linked_from_every_dashboard_page_and_served_at_the_usual_address(as_operator, client):
    assert 'rel="icon"' in as_operator.get("/dashboard/").content.decode()
    redirect = client.get("/favicon.ico")
    assert redirect.status_code == 302 and redirect["Location"].endswith("favicon.svg")
    served = client.get(redirect["Location"])
    assert served.status_code == 200 and b"<svg" in b"".join(served.streaming_content)


def test_overview_counts_every_waiting_run_including_tomorrows(as_operator, ws):
    flow = factories.flow(ws)
    now = timezone.now()
    for hours in (1, 5, 30):  # all waiting; one due tomorrow
        factories.flow_run(flow, State.SCHEDULED, scheduled_start=now + timedelta(hours=hours))
    factories.flow_run(flow, State.RUNNING, scheduled_start=now - timedelta(days=3))  # a long run
    factories.flow_run(flow, State.FAILED, scheduled_start=now - timedelta(hours=2))
    factories.flow_run(flow, State.FAILED, scheduled_start=now - timedelta(days=2))  # finished long ago
    by_state = dict(as_operator.get("/dashboard/").context["by_state"])
    assert (by_state["SCHEDULED"], by_state["RUNNING"], by_state["FAILED"]) == (3, 1, 1)


def test_recovery_review_shows_a_state_change_and_its_log_line_as_one_act(as_operator, ws):
    now = timezone.now()
    run = factories.flow_run(factories.flow(ws), State.SCHEDULED, lazarus_count=2)
    for minutes in (40, 10):  # what Lazarus writes: a state change and a log line, one moment
        at = now - timedelta(minutes=minutes)
        why = f"Rescheduled by Lazarus: no task run alive ({minutes})"
        StateChange.objects.create(flow_run=run, from_state=State.RUNNING, to_state=State.SCHEDULED,
                                   actor=Actor.LAZARUS, message=why, timestamp=at)
        Log.objects.create(workspace=ws, flow_run=run, source="lazarus", level=LogLevel.WARNING, message=why,
                           timestamp=at)
    rows = as_operator.get("/dashboard/recovery/?period=24").context["rows"]
    assert [(r["attempt"], r["kind"]) for r in rows] == [(2, "state change and log"), (1, "state change and log")]
    assert rows[0]["reason"] == "RUNNING → SCHEDULED: Rescheduled by Lazarus: no task run alive (10)"


def test_recovery_review_warns_when_a_recovery_service_itself_fails(as_operator, ws, periodic_tasks):
    now = timezone.now()
    ServicePass.objects.create(service="lazarus", started=now - timedelta(minutes=30), ok=True)
    ServicePass.objects.create(service="lazarus", started=now - timedelta(minutes=5), ok=False,
                               error="Traceback (most recent call last):\nOperationalError: disk full")
    ServicePass.objects.create(service="zombie-killer", started=now - timedelta(seconds=20), ok=True)
    page = as_operator.get("/dashboard/recovery/")
    names = [service["name"] for service in page.context["failing"]]
    assert "lazarus" in names and "zombie-killer" not in names
    html = page.content.decode()
    assert "lazarus is failing." in html and "OperationalError: disk full" in html
    ServicePass.objects.create(service="lazarus", started=now, ok=True)
    assert "lazarus" not in [s["name"] for s in as_operator.get("/dashboard/recovery/").context["failing"]]


def test_admin_lists_show_times_to_the_second(client, ws):
    admin = get_user_model().objects.create_superuser("root-2", password="pw-for-tests-123")
    client.force_login(admin)
    run = factories.flow_run(factories.flow(ws), State.COMPLETED)
    Log.objects.create(workspace=ws, flow_run=run, message="hello",
                       timestamp=timezone.now().replace(hour=7, minute=8, second=9, microsecond=0))
    html = client.get("/admin/runs/log/").content.decode()
    assert "07:08:09" in html
