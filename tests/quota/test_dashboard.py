"""The usage page: each workspace's month against its quota, for its members; admins change the quota."""

import pytest

from runs.models import Actor, AuditEntry, Membership, Role, State, TaskRunUsage
from runs.states import set_task_run_state
from tests import factories

pytestmark = pytest.mark.django_db
URL = "/dashboard/usage/"


def complete(ws, count):
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    for _ in range(count):
        set_task_run_state(factories.task_run(run), State.COMPLETED, actor=Actor.AGENT)


def join(user, ws, role=Role.ADMIN):
    Membership.objects.create(user=user, workspace=ws, role=role)


def logged_in(client, ws, role):
    user = factories.member(ws, role=role)
    client.force_login(user)
    return user


def test_the_page_shows_the_month_against_the_quota_of_the_members_workspaces_only(client, ws, other_ws):
    ws.monthly_task_run_quota = 5000
    ws.save()
    complete(ws, 3)
    complete(other_ws, 2)
    logged_in(client, ws, Role.VIEWER)
    page = client.get(URL).content.decode()
    assert "3</strong> of <strong>5,000</strong> task runs this month (0 %)" in page
    assert "4,997 left this month." in page
    assert other_ws.name not in page
    assert 'aria-current="page">Usage</a>' in page
    assert "Save quota" not in page  # a viewer changes nothing


def test_a_workspace_without_a_quota_shows_its_count_alone(client, ws):
    complete(ws, 2)
    logged_in(client, ws, Role.VIEWER)
    page = client.get(URL).content.decode()
    assert "<strong>2</strong> task runs this month · no quota" in page
    assert 'role="meter"' not in page


def test_a_reached_quota_says_what_happens_and_until_when(client, ws):
    ws.monthly_task_run_quota = 2
    ws.save()
    complete(ws, 2)
    logged_in(client, ws, Role.OPERATOR)
    page = client.get(URL).content.decode()
    assert "QUOTA REACHED" in page
    assert "until an admin of the workspace raises the quota" in page


def test_the_nav_links_to_the_page(client, ws):
    logged_in(client, ws, Role.VIEWER)
    assert f'href="{URL}"' in client.get("/dashboard/").content.decode()


def test_the_page_needs_a_login(client):
    assert client.get(URL).status_code == 302


def test_the_page_costs_the_same_queries_for_one_workspace_or_many(client, django_assert_max_num_queries):
    user = factories.user()
    first = factories.workspace()
    join(user, first)
    client.force_login(user)
    client.get(URL)
    # session, user, roles for the header, memberships, workspaces, usage rows, month counts
    with django_assert_max_num_queries(7) as one:
        client.get(URL)
    for _ in range(6):
        ws = factories.workspace(monthly_task_run_quota=100)
        join(user, ws)
        complete(ws, 1)
    with django_assert_max_num_queries(len(one)):
        page = client.get(URL).content.decode()
    assert page.count('class="card usage"') == 7


def test_an_admin_changes_the_quota_on_the_page_and_the_trail_records_it(client, ws):
    admin = logged_in(client, ws, Role.ADMIN)
    answer = client.post(f"/dashboard/usage/{ws.pk}/quota/", {"monthly_task_run_quota": "1,500"})
    assert answer.status_code == 302
    ws.refresh_from_db()
    assert ws.monthly_task_run_quota == 1500
    entry = AuditEntry.objects.get(workspace=ws, action="workspace.settings")
    assert (entry.actor, entry.via, entry.after) == (admin.username, "dashboard", {"monthly_task_run_quota": 1500})
    client.post(f"/dashboard/usage/{ws.pk}/quota/", {"monthly_task_run_quota": ""})
    ws.refresh_from_db()
    assert ws.monthly_task_run_quota is None


def test_a_bad_quota_is_refused_with_a_message(client, ws):
    logged_in(client, ws, Role.ADMIN)
    page = client.post(f"/dashboard/usage/{ws.pk}/quota/", {"monthly_task_run_quota": "0"}, follow=True)
    assert "The quota must be a whole number from 1" in page.content.decode()
    ws.refresh_from_db()
    assert ws.monthly_task_run_quota is None


@pytest.mark.parametrize("role, status", [(Role.VIEWER, 403), (Role.OPERATOR, 403)])
def test_only_admins_change_the_quota_on_the_page(client, ws, role, status):
    logged_in(client, ws, role)
    assert client.post(f"/dashboard/usage/{ws.pk}/quota/", {"monthly_task_run_quota": "9"}).status_code == status
    ws.refresh_from_db()
    assert ws.monthly_task_run_quota is None


def test_another_workspace_is_not_found(client, ws, other_ws):
    logged_in(client, ws, Role.ADMIN)
    assert client.post(f"/dashboard/usage/{other_ws.pk}/quota/", {"monthly_task_run_quota": "9"}).status_code == 404


def test_the_admin_lists_the_counters_of_the_staffs_workspaces_read_only(client, ws, other_ws):
    complete(ws, 2)
    complete(other_ws, 1)
    staff = factories.member(ws, role=Role.ADMIN, is_staff=True)
    client.force_login(staff)
    page = client.get("/admin/runs/taskrunusage/")
    assert page.status_code == 200
    text = page.content.decode()
    assert str(ws) in text and str(other_ws) not in text
    row = TaskRunUsage.objects.filter(workspace=ws).first()
    assert client.post(f"/admin/runs/taskrunusage/{row.pk}/change/", {"completed": 0}).status_code == 403
