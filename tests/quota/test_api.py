"""The usage endpoint and the quota in the workspace's settings: who reads, who changes, the trail."""

from datetime import datetime, timezone as dt_timezone

import pytest

from runs.models import Actor, AuditEntry, Role, State
from runs.states import set_task_run_state
from tests import factories

pytestmark = pytest.mark.django_db
UTC = dt_timezone.utc


def complete_at(ws, when, count=1):
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    for _ in range(count):
        set_task_run_state(factories.task_run(run), State.COMPLETED, actor=Actor.AGENT, now=when)


@pytest.fixture
def frozen(monkeypatch, now):
    monkeypatch.setattr("django.utils.timezone.now", lambda: now)
    return now


def test_usage_shows_this_month_against_the_limit_and_the_months_before(ws, other_ws, api, key_for, prefix, frozen):
    ws.monthly_task_run_quota = 10
    ws.save()
    complete_at(ws, frozen, 4)
    complete_at(ws, datetime(2026, 11, 30, 23, 0, tzinfo=UTC), 2)
    complete_at(ws, datetime(2026, 9, 2, tzinfo=UTC), 1)
    complete_at(other_ws, frozen, 5)  # another workspace's count is not ours
    answer = api.as_key(key_for(Role.VIEWER)).get(f"{prefix}/usage?months=4")
    assert answer.status_code == 200
    assert answer.json() == {
        "month": "2026-12", "task_runs_completed": 4, "limit": 10, "remaining": 6, "reached": False,
        "resets_at": "2027-01-01T00:00:00Z",
        "months": [{"month": "2026-12", "task_runs_completed": 4}, {"month": "2026-11", "task_runs_completed": 2},
                   {"month": "2026-10", "task_runs_completed": 0}, {"month": "2026-09", "task_runs_completed": 1}]}


def test_usage_without_a_quota_says_so(ws, api, key_for, prefix, frozen):
    complete_at(ws, frozen, 2)
    body = api.as_key(key_for(Role.VIEWER)).get(f"{prefix}/usage").json()
    assert (body["task_runs_completed"], body["limit"], body["remaining"], body["reached"]) == (2, None, None, False)
    assert len(body["months"]) == 12


def test_usage_says_when_the_quota_is_reached(ws, api, key_for, prefix, frozen):
    ws.monthly_task_run_quota = 2
    ws.save()
    complete_at(ws, frozen, 3)  # runs already running count past it
    body = api.as_key(key_for(Role.VIEWER)).get(f"{prefix}/usage").json()
    assert (body["task_runs_completed"], body["remaining"], body["reached"]) == (3, 0, True)


@pytest.mark.parametrize("months", ["0", "25", "many", "-1"])
def test_a_bad_months_is_a_400_naming_it(api, key_for, prefix, months):
    answer = api.as_key(key_for(Role.VIEWER)).get(f"{prefix}/usage?months={months}")
    assert answer.status_code == 400
    assert "months" in answer.json()["error"]["fields"]


def test_an_agent_key_and_an_outsider_cannot_read_usage(ws, other_ws, api, key_for, prefix):
    assert api.as_key(key_for(Role.AGENT)).get(f"{prefix}/usage").status_code == 403
    assert api.as_key(key_for(Role.ADMIN, workspace=other_ws)).get(f"{prefix}/usage").status_code in (403, 404)


def test_an_admin_sets_and_clears_the_quota_and_the_trail_records_both(ws, api, key_for, prefix):
    client = api.as_key(key_for(Role.ADMIN))
    answer = client.patch(f"{prefix}/settings", {"monthly_task_run_quota": 5000}, format="json")
    assert answer.status_code == 200 and answer.json()["monthly_task_run_quota"] == 5000
    ws.refresh_from_db()
    assert ws.monthly_task_run_quota == 5000
    assert client.patch(f"{prefix}/settings", {"monthly_task_run_quota": None}, format="json").status_code == 200
    ws.refresh_from_db()
    assert ws.monthly_task_run_quota is None
    entries = AuditEntry.objects.filter(workspace=ws, action="workspace.settings").order_by("id")
    assert [(e.before, e.after) for e in entries] == [
        ({"monthly_task_run_quota": None}, {"monthly_task_run_quota": 5000}),
        ({"monthly_task_run_quota": 5000}, {"monthly_task_run_quota": None})]


def test_every_member_reads_the_quota_in_the_settings(ws, api, key_for, prefix):
    ws.monthly_task_run_quota = 7
    ws.save()
    assert api.as_key(key_for(Role.VIEWER)).get(f"{prefix}/settings").json()["monthly_task_run_quota"] == 7


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_only_admins_change_the_quota(ws, api, key_for, prefix, role):
    answer = api.as_key(key_for(role)).patch(f"{prefix}/settings", {"monthly_task_run_quota": 1}, format="json")
    assert answer.status_code == 403
    ws.refresh_from_db()
    assert ws.monthly_task_run_quota is None


@pytest.mark.parametrize("value", [0, -5, "lots", 3_000_000_000])
def test_a_bad_quota_is_a_400_naming_the_field(ws, api, key_for, prefix, value):
    answer = api.as_key(key_for(Role.ADMIN)).patch(f"{prefix}/settings", {"monthly_task_run_quota": value},
                                                   format="json")
    assert answer.status_code == 400
    assert "monthly_task_run_quota" in answer.json()["error"]["fields"]


def test_new_workspaces_take_the_quota_of_the_environment(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MONTHLY_TASK_RUN_QUOTA": 5000}
    assert factories.workspace().monthly_task_run_quota == 5000
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MONTHLY_TASK_RUN_QUOTA": None}
    assert factories.workspace().monthly_task_run_quota is None


@pytest.mark.parametrize("raw, expected", [("", None), ("5000", 5000)])
def test_the_environment_variable_is_a_positive_number_or_empty(monkeypatch, raw, expected):
    from orchestrator.settings import env_limit

    monkeypatch.setenv("ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA", raw)
    assert env_limit("ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA") == expected


@pytest.mark.parametrize("raw", ["0", "-1", "many"])
def test_a_bad_environment_variable_stops_the_start(monkeypatch, raw):
    from orchestrator.settings import BadEnvironment, env_limit

    monkeypatch.setenv("ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA", raw)
    with pytest.raises(BadEnvironment, match="ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA"):
        env_limit("ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA")
