"""Flows, queues, members, API keys and throttling over the API."""

import pytest

from runs.models import ApiKey, Flow, Membership, Role, WorkQueue
from tests import factories


def test_register_version_promotes_it_to_latest(admin, prefix, ws):
    created = admin.post(f"{prefix}/flows/", {"name": "etl", "version": {"entrypoint": "etl:run", "version": "1"}},
                         format="json").json()
    response = admin.post(f"{prefix}/flows/{created['id']}/versions/", {"entrypoint": "etl:run", "version": "2"},
                          format="json")
    assert response.status_code == 201
    flow = admin.get(f"{prefix}/flows/{created['id']}/").json()
    assert flow["latest_version"]["version"] == "2"
    versions = admin.get(f"{prefix}/flows/{created['id']}/versions/").json()["results"]
    assert [(v["version"], v["archived"]) for v in versions] == [("2", False), ("1", True)]


def test_duplicate_flow_name_is_400(admin, prefix, ws):
    factories.flow(ws, name="etl")
    response = admin.post(f"{prefix}/flows/", {"name": "etl"}, format="json")
    assert response.status_code == 400 and "name" in response.json()["error"]["fields"]
    assert Flow.objects.filter(workspace=ws).count() == 1


def test_operator_pauses_and_limits_a_queue(api, key_for, prefix, ws):
    queue = factories.work_queue(ws)
    operator = api.as_key(key_for(Role.OPERATOR))
    assert operator.post(f"{prefix}/work_queues/{queue.pk}/pause/").json()["paused"] is True
    assert operator.post(f"{prefix}/work_queues/{queue.pk}/concurrency_limit/", {"concurrency_limit": 3},
                         format="json").json()["concurrency_limit"] == 3
    queue.refresh_from_db()
    assert (queue.paused, queue.concurrency_limit) == (True, 3)
    assert operator.post(f"{prefix}/work_queues/{queue.pk}/resume/").json()["paused"] is False


def test_new_key_shows_its_secret_once_and_works(api, admin, prefix, ws):
    created = admin.post(f"{prefix}/api_keys/", {"name": "ci", "role": "viewer"}, format="json").json()
    assert created["secret"].startswith("orch_")
    listed = admin.get(f"{prefix}/api_keys/").json()["results"]
    assert all("secret" not in key for key in listed)
    fresh = api.__class__()
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {created['secret']}")
    assert fresh.get(f"{prefix}/ping").json()["role"] == "viewer"
    assert admin.get(f"{prefix}/api_keys/{created['id']}/").json()["last_used_at"] is not None


def test_revoked_key_stops_working_and_stays_listed(api, admin, prefix, ws):
    key, secret = factories.api_key(ws, role=Role.VIEWER)
    assert admin.delete(f"{prefix}/api_keys/{key.pk}/").status_code == 204
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert admin.get(f"{prefix}/api_keys/{key.pk}/").json()["revoked"] is True
    assert api.as_key(secret).get(f"{prefix}/ping").status_code == 401


def test_key_expiry_must_be_in_the_future(admin, prefix):
    response = admin.post(f"{prefix}/api_keys/", {"name": "old", "expires_at": "2001-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 400 and "expires_at" in response.json()["error"]["fields"]


def test_members_are_added_by_email_changed_and_removed(admin, prefix, ws):
    person = factories.user(email="ada@example.com")
    added = admin.post(f"{prefix}/members/", {"user": "ADA@example.com", "role": "viewer"}, format="json")
    assert added.status_code == 201 and added.json()["user"] == person.username
    changed = admin.patch(f"{prefix}/members/{added.json()['id']}/", {"role": "operator"}, format="json")
    assert changed.json()["role"] == "operator"
    assert admin.delete(f"{prefix}/members/{added.json()['id']}/").status_code == 204
    assert not Membership.objects.filter(user=person, workspace=ws).exists()


def test_the_last_admin_cannot_be_demoted_or_removed(admin, prefix, ws):
    only = Membership.objects.get(user=factories.member(ws, role=Role.ADMIN), workspace=ws)
    assert admin.patch(f"{prefix}/members/{only.pk}/", {"role": "viewer"}, format="json").status_code == 400
    assert admin.delete(f"{prefix}/members/{only.pk}/").status_code == 400


def test_failed_authentications_are_throttled_with_retry_after(api, prefix, ws, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_FAILED_AUTH_RATE": "3/minute"}
    statuses = [api.as_key("orch_wrong").get(f"{prefix}/ping").status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    response = api.as_key("orch_wrong").get(f"{prefix}/ping")
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    # Only unknown keys are refused: a valid one from the same address is served (test_client_address.py).
    assert api.as_key(factories.api_key(ws)[1]).get(f"{prefix}/ping").status_code == 200


def test_expensive_endpoints_are_throttled_per_key(api, key_for, prefix, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_EXPENSIVE_RATE": "2/minute"}
    client = api.as_key(key_for(Role.VIEWER))
    statuses = [client.get(f"{prefix}/flow_runs/").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert client.get(f"{prefix}/flows/").status_code == 200  # cheap endpoints are not counted


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_unknown_api_url_is_json_404_for_any_method(admin, method):
    response = getattr(admin, method)("/api/no/such/thing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_schema_and_swagger_ui_are_served_locally(client):
    schema = client.get("/api/schema/?format=json").json()
    assert "/api/accounts/{account}/workspaces/{workspace}/flow_runs/{id}/retry/" in schema["paths"]
    page = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in page and "cdn" not in page.lower()


def test_work_queue_names_are_unique_per_workspace(admin, prefix, ws):
    factories.work_queue(ws, name="default-x")
    assert admin.post(f"{prefix}/work_queues/", {"name": "default-x"}, format="json").status_code == 400
    assert WorkQueue.objects.filter(workspace=ws, name="default-x").count() == 1


def test_schedule_previews_are_throttled_as_expensive(api, key_for, prefix, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_EXPENSIVE_RATE": "1/minute"}
    client = api.as_key(key_for(Role.VIEWER))
    body = {"kind": "interval", "interval_seconds": 60, "count": 2}
    statuses = [client.post(f"{prefix}/schedules/preview/", body, format="json").status_code for _ in range(2)]
    assert statuses == [200, 429]


def test_every_member_reads_the_settings_and_only_admins_change_them(api, key_for, prefix, ws):
    viewer = api.as_key(key_for(Role.VIEWER))
    assert viewer.get(f"{prefix}/settings").json()["run_retention_days"] == ws.run_retention_days
    assert viewer.patch(f"{prefix}/settings", {"run_retention_days": 7}, format="json").status_code == 403
    admin = api.as_key(key_for(Role.ADMIN))
    changed = admin.patch(f"{prefix}/settings", {"run_retention_days": 90, "name": "Production"}, format="json")
    assert changed.status_code == 200 and changed.json()["run_retention_days"] == 90
    ws.refresh_from_db()
    assert (ws.run_retention_days, ws.name) == (90, "Production")


@pytest.mark.parametrize("days", [0, -1, "soon", 100000])
def test_bad_retention_is_400_naming_the_field_and_changes_nothing(admin, prefix, ws, days):
    before = ws.run_retention_days
    response = admin.patch(f"{prefix}/settings", {"run_retention_days": days}, format="json")
    assert response.status_code == 400 and "run_retention_days" in response.json()["error"]["fields"]
    ws.refresh_from_db()
    assert ws.run_retention_days == before


def test_the_slug_of_a_workspace_cannot_be_changed_through_settings(admin, prefix, ws):
    response = admin.patch(f"{prefix}/settings", {"slug": "elsewhere"}, format="json")
    assert response.status_code == 200 and response.json()["slug"] == ws.slug


def test_a_browser_session_needs_the_csrf_token_to_act(ws, prefix):
    """Session auth is for the browser, so writes need Django's CSRF token; reads do not."""
    from django.test import Client

    operator = factories.member(ws, role=Role.OPERATOR)
    queue = factories.work_queue(ws)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(operator)
    assert browser.get(f"{prefix}/work_queues/").status_code == 200
    refused = browser.post(f"{prefix}/work_queues/{queue.pk}/pause/")
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    queue.refresh_from_db()
    assert queue.paused is False
    browser.get("/dashboard/login/")  # any page that renders a form sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    accepted = browser.post(f"{prefix}/work_queues/{queue.pk}/pause/", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200 and accepted.json()["paused"] is True


def test_a_session_user_acts_with_their_membership_role(client, ws, prefix):
    viewer = factories.member(ws, role=Role.VIEWER)
    client.force_login(viewer)
    assert client.get(f"{prefix}/ping").json() == {"workspace": str(ws), "role": "viewer"}
    response = client.post(f"{prefix}/flow_runs/", {"flow": factories.flow(ws).name}, content_type="application/json")
    assert response.status_code == 403 and "viewer" in response.json()["error"]["message"]


@pytest.fixture
def personal_admin_key(ws):
    """An admin who issued a key acting as themselves (for_me)."""
    person = factories.member(ws, role=Role.ADMIN)
    factories.member(ws, role=Role.ADMIN)  # another admin, so this one may be demoted or removed
    return person, factories.api_key(ws, role=Role.ADMIN, user=person)[1]


def test_a_personal_key_stops_when_its_person_leaves_the_workspace(api, prefix, ws, personal_admin_key):
    person, secret = personal_admin_key
    assert api.as_key(secret).get(f"{prefix}/members/").status_code == 200
    Membership.objects.filter(user=person, workspace=ws).delete()
    response = api.as_key(secret).get(f"{prefix}/members/")
    assert response.status_code == 401 and "no longer a member" in response.json()["error"]["message"]


def test_a_personal_key_acts_with_no_more_than_its_persons_current_role(api, prefix, ws, personal_admin_key):
    person, secret = personal_admin_key
    Membership.objects.filter(user=person, workspace=ws).update(role=Role.VIEWER)
    client = api.as_key(secret)
    assert client.get(f"{prefix}/ping").json()["role"] == "viewer"
    assert client.post(f"{prefix}/api_keys/", {"name": "escalate", "role": "admin"}, format="json").status_code == 403


def test_a_personal_key_of_a_deactivated_account_is_refused(api, prefix, ws, personal_admin_key):
    person, secret = personal_admin_key
    person.is_active = False
    person.save()
    assert api.as_key(secret).get(f"{prefix}/ping").status_code == 401


def test_a_service_key_request_costs_one_query(api, key_for, prefix, django_assert_max_num_queries):
    """The key's lookup brings its workspace: heartbeats and claims pay for one query, not two."""
    client = api.as_key(key_for(Role.OPERATOR))
    client.get(f"{prefix}/ping")  # records last use (at most once a minute)
    with django_assert_max_num_queries(1):
        assert client.get(f"{prefix}/ping").status_code == 200


def test_a_personal_key_cannot_be_made_for_someone_outside_the_workspace(ws):
    from django.core.exceptions import ValidationError

    outsider, member = factories.user(), factories.member(ws, role=Role.VIEWER)
    with pytest.raises(ValidationError) as refused:
        ApiKey(workspace=ws, user=outsider, name="x", role=Role.VIEWER).clean()
    assert "user" in refused.value.message_dict
    ApiKey(workspace=ws, user=member, name="y", role=Role.VIEWER).clean()
    ApiKey(workspace=ws, name="service", role=Role.OPERATOR).clean()


@pytest.mark.parametrize("level", ["1" * 4301, "²", "1000", "LOUD"])
def test_a_log_level_that_is_no_level_is_400(admin, prefix, level):
    response = admin.get(f"{prefix}/logs/", {"level": level})
    assert response.status_code == 400 and "level" in response.json()["error"]["fields"]


def test_admins_set_how_long_events_are_kept_and_bad_values_are_400(admin, prefix, ws):
    assert admin.get(f"{prefix}/settings").json()["event_retention_days"] == 30
    assert admin.patch(f"{prefix}/settings", {"event_retention_days": 7}, format="json").status_code == 200
    ws.refresh_from_db()
    assert ws.event_retention_days == 7
    for days in (0, 3651, "a week"):
        response = admin.patch(f"{prefix}/settings", {"event_retention_days": days}, format="json")
        assert response.status_code == 400 and "event_retention_days" in response.json()["error"]["fields"]
    ws.refresh_from_db()
    assert ws.event_retention_days == 7
