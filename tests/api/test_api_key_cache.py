"""The caches of verified API keys and known workspaces (runs/api/key_cache.py): a key is looked up once per
ORCHESTRATOR_API_KEY_CACHE_SECONDS per process, a revocation made elsewhere is honoured within that
time, one made here and an expiry at once, and the cache never holds more than its size."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs import actions
from runs.api import authentication
from runs.api.key_cache import known_workspaces, verified_keys
from runs.audit import Who
from runs.models import ApiKey, Membership, Role, State
from tests import factories
from tests.agent.test_api import due_run
from tests.conftest import api_prefix


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(verified_keys, "clock", fake)
    monkeypatch.setattr(known_workspaces, "clock", fake)
    return fake


def ping(api, prefix, secret):
    return api.as_key(secret).get(f"{prefix}/ping")


def test_a_verified_key_needs_no_query_on_its_next_request(api, ws, prefix, django_assert_max_num_queries):
    _, secret = factories.api_key(ws)
    assert ping(api, prefix, secret).status_code == 200  # looked up, and last_used_at written
    with django_assert_max_num_queries(0):
        assert ping(api, prefix, secret).json()["role"] == Role.OPERATOR


def test_a_key_revoked_by_another_process_stops_working_within_the_ttl(api, ws, prefix, clock, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "API_KEY_CACHE_SECONDS": 5}
    key, secret = factories.api_key(ws)
    assert ping(api, prefix, secret).status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())  # no signal: as from another process
    clock.now += 4.9
    assert ping(api, prefix, secret).status_code == 200  # still within the cache's 5 s
    clock.now += 0.2
    assert ping(api, prefix, secret).status_code == 401


def test_with_ttl_zero_a_revocation_is_honoured_on_the_next_request(api, ws, prefix, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "API_KEY_CACHE_SECONDS": 0}
    key, secret = factories.api_key(ws)
    assert ping(api, prefix, secret).status_code == 200
    assert len(verified_keys) == 0
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert ping(api, prefix, secret).status_code == 401


def test_a_key_revoked_in_this_process_stops_working_at_once(api, ws, prefix, clock):
    key, secret = factories.api_key(ws)
    assert ping(api, prefix, secret).status_code == 200
    actions.revoke_keys(ApiKey.objects.filter(pk=key.pk), who=Who.command("test"))
    assert ping(api, prefix, secret).status_code == 401


def test_an_expired_key_is_refused_at_once_though_it_is_cached(api, ws, prefix, clock, monkeypatch):
    now = timezone.now()
    _, secret = factories.api_key(ws, expires_at=now + timedelta(seconds=2))
    assert ping(api, prefix, secret).status_code == 200
    monkeypatch.setattr(authentication.timezone, "now", lambda: now + timedelta(seconds=3))
    assert ping(api, prefix, secret).status_code == 401  # the cache's clock did not move


def test_a_demoted_person_s_key_acts_with_the_new_role_at_once(api, ws, prefix, clock):
    person = factories.member(ws, role=Role.ADMIN)
    _, secret = factories.api_key(ws, role=Role.ADMIN, user=person)
    assert ping(api, prefix, secret).json()["role"] == Role.ADMIN
    membership = Membership.objects.get(user=person, workspace=ws)
    membership.role = Role.VIEWER
    membership.save()
    assert ping(api, prefix, secret).json()["role"] == Role.VIEWER


def test_the_cache_keeps_at_most_its_size_dropping_the_least_recently_used(api, ws, prefix, settings,
                                                                          django_assert_max_num_queries):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "API_KEY_CACHE_SIZE": 2}
    first, second, third = (factories.api_key(ws)[1] for _ in range(3))
    for secret in (first, second, first, third):  # `second` is then the least recently used
        assert ping(api, prefix, secret).status_code == 200
    assert len(verified_keys) == 2
    with django_assert_max_num_queries(0):
        assert ping(api, prefix, first).status_code == 200
    with django_assert_max_num_queries(0):
        assert ping(api, prefix, third).status_code == 200
    with django_assert_max_num_queries(1):  # looked up again (last_used_at was written a moment ago)
        assert ping(api, prefix, second).status_code == 200


def test_one_request_s_changes_to_its_key_do_not_reach_the_next(api, ws, prefix, monkeypatch):
    _, secret = factories.api_key(ws)
    seen = []
    original = authentication.ApiKeyAuthentication.authenticate

    def authenticate_and_scribble(self, request):
        user, key = original(self, request)
        seen.append(key.workspace.name)
        key.workspace.name = "scribbled"
        key.acting_role = Role.ADMIN
        return user, key

    monkeypatch.setattr(authentication.ApiKeyAuthentication, "authenticate", authenticate_and_scribble)
    ping(api, prefix, secret)
    ping(api, prefix, secret)
    assert seen == [ws.name, ws.name]
    monkeypatch.undo()
    assert ping(api, prefix, secret).json()["role"] == Role.OPERATOR


def test_run_tokens_are_not_cached(reporter, ws, prefix):
    run = due_run(ws, state=State.RUNNING)
    assert reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat").status_code == 200
    assert len(verified_keys) == 0


def beat(reporter, prefix, run):
    return reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat")


def test_a_report_token_s_workspace_is_read_once(reporter, ws, prefix):
    run = due_run(ws, state=State.RUNNING)
    url = f"{prefix}/agent/flow_runs/{run.pk}/heartbeat"
    reporter.client.credentials(HTTP_AUTHORIZATION=f"Bearer {reporter.token_for_request(url, None)}")
    reads = []
    for _ in range(2):
        with CaptureQueriesContext(connection) as captured:
            assert reporter.client.post(url).json() == {"state": "RUNNING"}
        reads.append(sum("runs_workspace" in q["sql"] for q in captured.captured_queries))
    assert reads == [1, 0] and len(known_workspaces) == 1


def test_a_workspace_deleted_by_another_process_stops_reports_within_the_ttl(reporter, ws, prefix, clock, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "API_KEY_CACHE_SECONDS": 5}
    run = due_run(ws, state=State.RUNNING)
    assert beat(reporter, prefix, run).status_code == 200
    type(ws).all_objects.filter(pk=ws.pk).update(deleted_at=timezone.now())  # no signal: as from another process
    clock.now += 4.9
    assert beat(reporter, prefix, run).status_code == 200
    clock.now += 0.2
    assert beat(reporter, prefix, run).status_code == 404


def test_a_workspace_deleted_or_renamed_in_this_process_stops_reports_at_once(reporter, ws, other_ws, prefix, clock):
    run = due_run(ws, state=State.RUNNING)
    assert beat(reporter, prefix, run).status_code == 200
    old_prefix, ws.slug = prefix, f"{ws.slug}-renamed"
    ws.save()
    assert beat(reporter, old_prefix, run).status_code == 404
    assert beat(reporter, api_prefix(ws), run).status_code == 200
    actions.delete_workspace(ws, who=Who.command("test"))
    assert beat(reporter, old_prefix, run).status_code == 404


def test_a_report_token_answers_404_under_another_workspace_s_names(reporter, ws, other_ws, prefix):
    run = due_run(ws, state=State.RUNNING)
    assert beat(reporter, prefix, run).status_code == 200  # known now
    assert beat(reporter, api_prefix(other_ws), run).status_code == 404


def test_one_report_s_changes_to_its_workspace_do_not_reach_the_next(reporter, ws, prefix):
    from runs.api.permissions import granted_workspace

    first = granted_workspace(ws.pk, ws.account.slug, ws.slug)
    first.name = "scribbled"
    first.account.slug = "scribbled"
    second = granted_workspace(ws.pk, ws.account.slug, ws.slug)
    assert (second.name, second.account.slug) == (ws.name, ws.account.slug)


def test_a_shallow_copy_of_a_model_is_what_copy_copy_makes(db):
    import copy

    from runs.api.key_cache import shallow_copy
    from tests import factories

    workspace = factories.workspace()
    workspace.account  # cached on the instance, as a verified key's workspace holds it
    ours, theirs = shallow_copy(workspace), copy.copy(workspace)
    for clone in (ours, theirs):
        assert type(clone) is type(workspace) and clone is not workspace and clone.pk == workspace.pk
        assert clone._state is not workspace._state and clone._state.db == workspace._state.db
        assert not clone._state.adding
        assert clone._state.fields_cache == workspace._state.fields_cache
        assert clone._state.fields_cache is not workspace._state.fields_cache
        assert clone.account is workspace.account
    assert {k: v for k, v in vars(ours).items() if k != "_state"} == \
        {k: v for k, v in vars(theirs).items() if k not in ("_state", "_django_version")}
    ours.account = factories.workspace().account  # what one request changes never reaches another
    assert workspace.account is theirs.account and ours.account is not workspace.account
    ours.name = "changed"
    assert workspace.name != "changed"
