"""The delivery log in the API, the admin and the dashboard: who sees which deliveries, filters,
and the retry that only operators may use."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils import timezone

from automations.models import Delivery, DeliveryKind, DeliveryStatus
from runs.models import AuditEntry, Role
from tests import factories
from tests.conftest import api_prefix

pytestmark = pytest.mark.django_db


@pytest.fixture
def log(ws, other_ws):
    """Three deliveries of `ws` (oldest first) and one of another workspace."""
    now = timezone.now()

    def make(workspace, kind, target, status, minutes_ago, **kw):
        return Delivery.objects.create(workspace=workspace, kind=kind, target=target, status=status,
                                       created=now - timedelta(minutes=minutes_ago), next_attempt=now + timedelta(hours=1),
                                       **kw)

    return {
        "failed": make(ws, DeliveryKind.WEBHOOK, "https://hooks.example.com/in?token=abc", DeliveryStatus.FAILED, 30,
                       attempts=8, last_status_code=500, last_error="HTTP 500: upstream broke"),
        "slack": make(ws, DeliveryKind.SLACK, "https://hooks.slack.com/services/T0/B0/SECRETPATH",
                      DeliveryStatus.DELIVERED, 20, attempts=1),
        "email": make(ws, DeliveryKind.EMAIL, "ops@example.com", DeliveryStatus.PENDING, 10, subject="[Orchestrator] x"),
        "foreign": make(other_ws, DeliveryKind.WEBHOOK, "https://theirs.example.com/", DeliveryStatus.FAILED, 5),
    }


# --- API -----------------------------------------------------------------------------------------

def test_api_lists_the_workspaces_deliveries_newest_first_with_tokens_hidden(api, ws, key_for, log):
    api.as_key(key_for(Role.VIEWER))
    response = api.get(f"{api_prefix(ws)}/deliveries/")
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [r["id"] for r in rows] == [log["email"].pk, log["slack"].pk, log["failed"].pk]
    assert rows[1]["target"] == "https://hooks.slack.com/…"
    assert rows[2]["target"] == "https://hooks.example.com/in?…"
    assert rows[2]["last_error"] == "HTTP 500: upstream broke" and rows[2]["attempts"] == 8
    assert "SECRETPATH" not in response.content.decode() and "token=abc" not in response.content.decode()


def test_api_filters_by_status_and_kind_and_names_a_bad_filter(api, ws, key_for, log):
    api.as_key(key_for(Role.VIEWER))
    assert [r["id"] for r in api.get(f"{api_prefix(ws)}/deliveries/?status=failed").json()["results"]] == [
        log["failed"].pk]
    assert [r["id"] for r in api.get(f"{api_prefix(ws)}/deliveries/?kind=email").json()["results"]] == [log["email"].pk]
    response = api.get(f"{api_prefix(ws)}/deliveries/?status=lost")
    assert response.status_code == 400 and "status" in response.json()["error"]["fields"]
    response = api.get(f"{api_prefix(ws)}/deliveries/?kind=pigeon")
    assert response.status_code == 400 and "kind" in response.json()["error"]["fields"]


def test_api_retry_is_for_operators_and_makes_the_delivery_due(api, ws, key_for, log):
    url = f"{api_prefix(ws)}/deliveries/{log['failed'].pk}/retry/"
    api.as_key(key_for(Role.VIEWER))
    assert api.post(url).status_code == 403
    api.as_key(key_for(Role.OPERATOR))
    before = timezone.now()
    response = api.post(url)
    assert response.status_code == 200 and response.json()["status"] == "pending"
    log["failed"].refresh_from_db()
    assert log["failed"].status == DeliveryStatus.PENDING and log["failed"].next_attempt >= before
    assert log["failed"].next_attempt <= timezone.now()
    assert AuditEntry.objects.get(action="delivery.retry").via == "api"


def test_api_retry_of_a_delivered_one_is_a_conflict_and_another_workspaces_is_not_found(api, ws, key_for, log):
    api.as_key(key_for(Role.OPERATOR))
    response = api.post(f"{api_prefix(ws)}/deliveries/{log['slack'].pk}/retry/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "already_delivered"
    assert api.post(f"{api_prefix(ws)}/deliveries/{log['foreign'].pk}/retry/").status_code == 404
    assert api.get(f"{api_prefix(ws)}/deliveries/{log['foreign'].pk}/").status_code == 404


# --- admin ---------------------------------------------------------------------------------------

def staff(ws, role):
    user = factories.member(ws, role=role)
    user.is_staff = True
    user.save()
    return user


def retry_in_admin(client, ids):
    return client.post("/admin/automations/delivery/",
                       {"action": "retry", ACTION_CHECKBOX_NAME: [str(i) for i in ids]})


def test_admin_is_read_only_and_scoped(client, ws, log):
    client.force_login(staff(ws, Role.ADMIN))
    page = client.get("/admin/automations/delivery/")
    assert page.status_code == 200
    shown = {row.pk for row in page.context["cl"].result_list}
    assert shown == {log["failed"].pk, log["slack"].pk, log["email"].pk}
    assert client.get("/admin/automations/delivery/add/").status_code == 403
    detail = client.get(f"/admin/automations/delivery/{log['failed'].pk}/change/")
    assert detail.status_code == 200 and b'name="target"' not in detail.content  # nothing to edit
    assert client.get(f"/admin/automations/delivery/{log['foreign'].pk}/change/").status_code == 302  # not found


def test_admin_retry_action_for_operators_only(client, ws, log):
    client.force_login(staff(ws, Role.VIEWER))
    retry_in_admin(client, [log["failed"].pk])
    log["failed"].refresh_from_db()
    assert log["failed"].status == DeliveryStatus.FAILED
    client.force_login(staff(ws, Role.OPERATOR))
    retry_in_admin(client, [log["failed"].pk, log["slack"].pk, log["foreign"].pk])
    for row in log.values():
        row.refresh_from_db()
    assert log["failed"].status == DeliveryStatus.PENDING
    assert log["slack"].status == DeliveryStatus.DELIVERED and log["foreign"].status == DeliveryStatus.FAILED
    assert AuditEntry.objects.get(action="delivery.retry").via == "admin"


# --- dashboard -----------------------------------------------------------------------------------

def test_dashboard_log_shows_the_workspaces_deliveries_without_retry_for_viewers(client, ws, log):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    page = client.get("/dashboard/deliveries/")
    assert page.status_code == 200
    html = page.content.decode()
    assert [item["delivery"].pk for item in page.context["items"]] == [log["email"].pk, log["slack"].pk,
                                                                      log["failed"].pk]
    assert "HTTP 500: upstream broke" in html and "Failed (gave up)" in html
    assert "SECRETPATH" not in html and "theirs.example.com" not in html
    assert "Retry now" not in html
    assert 'href="/dashboard/deliveries/"' in html  # in the navigation


def test_dashboard_filters(client, ws, log):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    page = client.get("/dashboard/deliveries/?status=failed&kind=webhook")
    assert [item["delivery"].pk for item in page.context["items"]] == [log["failed"].pk]
    page = client.get("/dashboard/deliveries/?status=<script>")  # an unknown filter shows everything
    assert len(page.context["items"]) == 3


def test_dashboard_retry_button_works_without_javascript_for_operators(client, ws, log):
    client.force_login(factories.member(ws, role=Role.OPERATOR))
    html = client.get("/dashboard/deliveries/?status=failed").content.decode()
    assert f'action="/dashboard/deliveries/{log["failed"].pk}/retry/"' in html
    response = client.post(f"/dashboard/deliveries/{log['failed'].pk}/retry/",
                           {"next": "/dashboard/deliveries/?status=failed"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/deliveries/?status=failed"
    log["failed"].refresh_from_db()
    assert log["failed"].status == DeliveryStatus.PENDING
    assert AuditEntry.objects.get(action="delivery.retry").via == "dashboard"
    # Only back to the log, never elsewhere.
    response = client.post(f"/dashboard/deliveries/{log['failed'].pk}/retry/", {"next": "https://evil.example/"})
    assert response["Location"] == "/dashboard/deliveries/"


def test_dashboard_retry_refuses_viewers_and_other_workspaces(client, ws, log):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    assert client.post(f"/dashboard/deliveries/{log['failed'].pk}/retry/").status_code == 403
    client.force_login(factories.member(ws, role=Role.OPERATOR))
    assert client.post(f"/dashboard/deliveries/{log['foreign'].pk}/retry/").status_code == 404
    assert client.get(f"/dashboard/deliveries/{log['failed'].pk}/retry/").status_code == 405
    log["failed"].refresh_from_db()
    log["foreign"].refresh_from_db()
    assert log["failed"].status == log["foreign"].status == DeliveryStatus.FAILED


def test_dashboard_log_needs_a_login(client):
    response = client.get("/dashboard/deliveries/")
    assert response.status_code == 302 and "/dashboard/login/" in response["Location"]


def test_dashboard_log_query_count_does_not_grow_with_rows(client, ws, django_assert_max_num_queries):
    Delivery.objects.bulk_create([Delivery(workspace=ws, kind=DeliveryKind.WEBHOOK, target="https://x.example/",
                                           status=DeliveryStatus.FAILED) for _ in range(120)])
    client.force_login(factories.member(ws, role=Role.OPERATOR))
    with django_assert_max_num_queries(10):
        page = client.get("/dashboard/deliveries/")
    assert len(page.context["items"]) == 50 and page.context["page"].has_next()
