"""Who may reach what: Bearer keys, session auth, roles, and other tenants' workspaces."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import ApiKey, FlowRun, Role, Schedule, ScheduleStatus
from tests import factories
from tests.conftest import api_prefix


@pytest.fixture
def flow(ws):
    return factories.flow(ws, name="etl")


def test_a_valid_key_lists_its_workspace_flows(api, key_for, prefix, flow):
    response = api.as_key(key_for(Role.VIEWER)).get(f"{prefix}/flows/")
    assert response.status_code == 200
    assert [f["name"] for f in response.json()["results"]] == ["etl"]
    assert response.json()["results"][0]["latest_version"]["entrypoint"] == "tests.flows:noop"


def test_key_use_is_recorded(api, ws, prefix):
    key, secret = factories.api_key(ws, role=Role.VIEWER)
    api.as_key(secret).get(f"{prefix}/flows/")
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_only_the_hash_of_a_key_is_stored(ws):
    key, secret = factories.api_key(ws)
    stored = ApiKey.objects.filter(pk=key.pk).values().get()
    assert secret not in str(stored.values())
    assert secret.startswith(key.prefix)


@pytest.mark.parametrize("header", ["Bearer orch_not-a-real-key", "Bearer", "Bearer a b"])
def test_a_wrong_key_is_401_with_the_error_form(api, prefix, flow, header):
    api.credentials(HTTP_AUTHORIZATION=header)
    response = api.get(f"{prefix}/flows/")
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"code", "message", "fields"}


def test_revoked_and_expired_keys_are_401(api, ws, prefix):
    revoked, revoked_secret = factories.api_key(ws)
    ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    _, expired_secret = factories.api_key(ws, expires_at=timezone.now() - timedelta(minutes=1))
    for secret in (revoked_secret, expired_secret):
        assert api.as_key(secret).get(f"{prefix}/flows/").status_code == 401


def test_no_credentials_is_401(api, prefix):
    assert api.get(f"{prefix}/flows/").status_code == 401


def test_another_workspace_is_404_not_403(api, key_for, other_ws, flow):
    response = api.as_key(key_for(Role.ADMIN)).get(f"{api_prefix(other_ws)}/flows/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_another_workspaces_run_is_404(api, key_for, prefix, other_ws):
    foreign_run = factories.flow_run(factories.flow(other_ws))
    assert api.as_key(key_for(Role.ADMIN)).get(f"{prefix}/flow_runs/{foreign_run.pk}/").status_code == 404


def test_unknown_workspace_is_404(api, key_for, ws):
    assert api.as_key(key_for()).get(f"/api/accounts/{ws.account.slug}/workspaces/nope/flows/").status_code == 404


def test_a_viewer_who_tries_to_act_gets_403(api, key_for, prefix, flow):
    schedule = factories.schedule(flow)
    response = api.as_key(key_for(Role.VIEWER)).post(f"{prefix}/schedules/{schedule.pk}/pause/")
    assert response.status_code == 403
    assert "viewer" in response.json()["error"]["message"]
    assert Schedule.objects.get(pk=schedule.pk).status == ScheduleStatus.ACTIVE


def test_an_operator_pauses_and_resumes(api, key_for, prefix, flow):
    schedule = factories.schedule(flow, interval_seconds=60)
    client = api.as_key(key_for(Role.OPERATOR))
    assert client.post(f"{prefix}/schedules/{schedule.pk}/resume/").status_code == 200
    assert FlowRun.objects.filter(schedule=schedule).count() == 10
    response = client.post(f"{prefix}/schedules/{schedule.pk}/pause/")
    assert response.status_code == 200 and response.json()["runs_deleted"] == 10
    assert Schedule.objects.get(pk=schedule.pk).status == ScheduleStatus.PAUSED


def test_an_operator_may_not_create_schedules(api, key_for, prefix, flow):
    response = api.as_key(key_for(Role.OPERATOR)).post(
        f"{prefix}/schedules/", {"flow": "etl", "slug": "x", "kind": "interval", "interval_seconds": 60}, format="json"
    )
    assert response.status_code == 403


def test_session_member_reads_and_non_member_gets_404(client, ws, other_ws, flow):
    viewer = factories.member(ws, role=Role.VIEWER)
    client.force_login(viewer)
    assert client.get(f"{api_prefix(ws)}/flows/").status_code == 200
    assert client.get(f"{api_prefix(other_ws)}/flows/").status_code == 404


def test_run_list_filters_by_state_and_hides_soft_deleted(api, key_for, prefix, flow):
    factories.flow_run(flow, state="RUNNING")
    factories.flow_run(flow, state="COMPLETED")
    factories.flow_run(flow, state="RUNNING", deleted_at=timezone.now())
    body = api.as_key(key_for(Role.VIEWER)).get(f"{prefix}/flow_runs/?state=running").json()
    assert [r["state"] for r in body["results"]] == ["RUNNING"]


def test_run_detail_shows_history(api, key_for, prefix, flow):
    from runs.models import Actor
    from runs.states import set_flow_run_state

    run = set_flow_run_state(factories.flow_run(flow), "LATE", actor=Actor.LATE_RUNS, message="past grace")
    body = api.as_key(key_for(Role.VIEWER)).get(f"{prefix}/flow_runs/{run.pk}/").json()
    assert body["history"][0]["to_state"] == "LATE" and body["history"][0]["actor"] == "mark-late-runs"
