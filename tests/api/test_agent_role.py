"""The agent role: an agent's key calls the agents' endpoints and nothing else, and no other role
calls those. People cannot hold it; admins issue agent keys; the demo's local agent gets one."""

import io

import pytest
from django.core.management import call_command

from runs.models import ApiKey, Membership, Role
from tests import factories


@pytest.fixture
def agent_key(key_for):
    return key_for(Role.AGENT)


def test_an_agent_key_registers_claims_and_pings_as_an_agent(api, prefix, agent_key):
    client = api.as_key(agent_key)
    assert client.get(f"{prefix}/agent/ping").status_code == 200
    registered = client.post(f"{prefix}/agent/register", {"name": "box", "queues": ["default"]}, format="json")
    assert registered.status_code == 201
    claim = client.post(f"{prefix}/agent/claim", {"agent_id": registered.json()["id"]}, format="json")
    assert claim.status_code == 200


@pytest.mark.parametrize("path", ["ping", "flows/", "flow_runs/", "settings", "members/", "api_keys/"])
def test_an_agent_key_reads_nothing_else(api, prefix, agent_key, path):
    response = api.as_key(agent_key).get(f"{prefix}/{path}")
    assert response.status_code == 403
    assert "agent key may call only the agents' endpoints" in response.json()["error"]["message"]


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMIN])
def test_operator_and_admin_keys_may_not_act_as_agents(api, prefix, key_for, role):
    response = api.as_key(key_for(role)).post(f"{prefix}/agent/register", {"name": "x", "queues": ["a"]},
                                              format="json")
    assert response.status_code == 403
    assert "agent role" in response.json()["error"]["message"]


def test_a_superusers_session_may_not_act_as_an_agent(client, prefix, admin_user):
    client.force_login(admin_user)
    assert client.get(f"{prefix}/agent/ping").status_code == 403


def test_admins_issue_agent_keys_for_no_person(admin, prefix):
    response = admin.post(f"{prefix}/api_keys/", {"name": "box-1", "role": "agent"}, format="json")
    assert response.status_code == 201 and response.json()["role"] == "agent" and response.json()["user"] is None
    refused = admin.post(f"{prefix}/api_keys/", {"name": "mine", "role": "agent", "for_me": True}, format="json")
    assert refused.status_code == 400 and "for_me" in refused.json()["error"]["fields"]


def test_people_cannot_hold_the_agent_role(admin, prefix, ws):
    person = factories.user()
    added = admin.post(f"{prefix}/members/", {"user": person.username, "role": "agent"}, format="json")
    assert added.status_code == 400 and "role" in added.json()["error"]["fields"]
    membership = Membership.objects.get(user=factories.member(ws, role=Role.VIEWER), workspace=ws)
    changed = admin.patch(f"{prefix}/members/{membership.pk}/", {"role": "agent"}, format="json")
    assert changed.status_code == 400 and "role" in changed.json()["error"]["fields"]


def test_a_personal_agent_key_never_borrows_its_persons_role(api, prefix, ws):
    """Refused when made, and harmless if one exists anyway: it stays an agent key."""
    from django.core.exceptions import ValidationError

    person = factories.member(ws, role=Role.ADMIN)
    with pytest.raises(ValidationError):
        ApiKey(workspace=ws, user=person, name="x", role=Role.AGENT).clean()
    secret = factories.api_key(ws, role=Role.AGENT, user=person)[1]
    assert api.as_key(secret).get(f"{prefix}/flows/").status_code == 403
    assert api.as_key(secret).get(f"{prefix}/agent/ping").status_code == 200


def test_the_demo_agent_gets_an_agent_key_and_an_older_operator_key_is_replaced(settings, tmp_path, db):
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    first = ApiKey.objects.get(name="local-agent")
    assert first.role == Role.AGENT
    call_command("seed_demo", stdout=io.StringIO())
    assert ApiKey.objects.filter(name="local-agent").count() == 1  # a usable agent key is kept

    # A key written by an earlier version (operator role): revoked and replaced by an agent key.
    workspace = first.workspace
    ApiKey.objects.filter(pk=first.pk).delete()
    _, operator_secret = ApiKey.issue(workspace=workspace, name="local-agent", role=Role.OPERATOR)
    (tmp_path / "agent.key").write_text(operator_secret + "\n")
    call_command("seed_demo", stdout=io.StringIO())
    keys = ApiKey.objects.filter(name="local-agent").order_by("created", "id")
    assert [(k.role, k.revoked_at is not None) for k in keys] == [(Role.OPERATOR, True), (Role.AGENT, False)]
    assert (tmp_path / "agent.key").read_text().strip() != operator_secret
