"""Workspace secrets: encrypted at rest, write-only in the API and the admin, handed to an agent only
in the claim of a run whose version names them, and redacted from what the run reports."""

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from rest_framework.test import APIClient

from runs import vault
from runs.models import FlowRun, Log, Role, Secret, State, StateChange, TaskRun, WorkQueue
from runs.run_tokens import token_of
from tests import factories

VALUE = "hunter2-correct-horse"


@pytest.fixture
def admin_key(api, key_for):
    return api.as_key(key_for(Role.ADMIN))


def secret_in(ws, name="DB_PASSWORD", value=VALUE):
    return factories.secret(ws, name=name, value=value)


# --- at rest -----------------------------------------------------------------------------------

def test_a_value_is_stored_encrypted_and_reads_back(ws):
    secret = secret_in(ws)
    assert VALUE not in secret.ciphertext
    assert vault.decrypt(Secret.objects.get(pk=secret.pk).ciphertext) == VALUE


def test_rotation_reencrypts_every_secret_with_the_new_key(ws, settings, capsys):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SECRETS_KEYS": [old]}
    secrets = [secret_in(ws, name=f"S{i}", value=f"value-{i}") for i in range(3)]
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SECRETS_KEYS": [new, old]}
    call_command("rotate_secrets_key")
    assert "Done: 3 secret(s)" in capsys.readouterr().out
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SECRETS_KEYS": [new]}  # the old key is gone
    assert [vault.decrypt(Secret.objects.get(pk=s.pk).ciphertext) for s in secrets] == [
        "value-0", "value-1", "value-2"]
    call_command("rotate_secrets_key")  # again: harmless


def test_rotation_names_the_secrets_no_key_can_read(ws, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SECRETS_KEYS": [Fernet.generate_key().decode()]}
    secret_in(ws, name="LOST")
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SECRETS_KEYS": [Fernet.generate_key().decode()]}
    with pytest.raises(CommandError, match="LOST"):
        call_command("rotate_secrets_key")


def test_a_bad_key_in_the_environment_is_named_clearly(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SECRETS_KEYS": ["not-a-key"]}
    with pytest.raises(Exception, match="ORCHESTRATOR_SECRETS_KEY must be"):
        vault.encrypt("x")


# --- the API: a value goes in and never comes out ----------------------------------------------

def test_an_admin_writes_replaces_and_deletes_a_secret_and_no_answer_holds_its_value(admin_key, prefix, ws):
    created = admin_key.post(f"{prefix}/secrets/", {"name": "DB_PASSWORD", "value": VALUE}, format="json")
    assert created.status_code == 201, created.content
    assert set(created.json()) == {"name", "created", "updated", "updated_by"}
    answers = [created, admin_key.get(f"{prefix}/secrets/"), admin_key.get(f"{prefix}/secrets/DB_PASSWORD/")]
    replaced = admin_key.put(f"{prefix}/secrets/DB_PASSWORD/", {"value": "n3w-" + VALUE}, format="json")
    assert replaced.status_code == 200
    answers.append(replaced)
    assert all(VALUE not in answer.content.decode() for answer in answers)
    assert vault.decrypt(Secret.objects.get(workspace=ws, name="DB_PASSWORD").ciphertext) == "n3w-" + VALUE
    assert admin_key.delete(f"{prefix}/secrets/DB_PASSWORD/").status_code == 204
    assert not Secret.objects.exists()


def test_a_second_secret_of_the_same_name_is_a_400_naming_the_field(admin_key, prefix, ws):
    secret_in(ws)
    answer = admin_key.post(f"{prefix}/secrets/", {"name": "DB_PASSWORD", "value": "x"}, format="json")
    assert answer.status_code == 400 and "name" in answer.json()["error"]["fields"]


@pytest.mark.parametrize("body, field", [
    ({"name": "1ABC", "value": "x"}, "name"), ({"name": "A-B", "value": "x"}, "name"),
    ({"name": "OK"}, "value"), ({"name": "OK", "value": "x" * (vault.MAX_VALUE_CHARS + 1)}, "value"),
])
def test_bad_input_is_a_400_naming_the_field(admin_key, prefix, body, field):
    answer = admin_key.post(f"{prefix}/secrets/", body, format="json")
    assert answer.status_code == 400 and field in answer.json()["error"]["fields"], answer.content


def test_viewers_see_nothing_of_secrets_and_operators_only_names(api, key_for, prefix, ws):
    secret_in(ws)
    viewer = api.as_key(key_for(Role.VIEWER))
    assert viewer.get(f"{prefix}/secrets/").status_code == 403
    assert viewer.get(f"{prefix}/secrets/DB_PASSWORD/").status_code == 403
    operator = api.as_key(key_for(Role.OPERATOR))
    assert [s["name"] for s in operator.get(f"{prefix}/secrets/").json()["results"]] == ["DB_PASSWORD"]
    assert operator.post(f"{prefix}/secrets/", {"name": "X", "value": "y"}, format="json").status_code == 403


def test_a_version_names_its_secrets_and_the_api_checks_the_names(api, key_for, prefix, ws):
    operator = api.as_key(key_for(Role.OPERATOR))
    flow = factories.flow(ws)
    good = operator.post(f"{prefix}/flows/{flow.pk}/versions/", {"entrypoint": "m:f", "secrets": ["DB_PASSWORD"]},
                         format="json")
    assert good.status_code == 201 and good.json()["secrets"] == ["DB_PASSWORD"]
    bad = operator.post(f"{prefix}/flows/{flow.pk}/versions/", {"entrypoint": "m:f", "secrets": ["no-dashes"]},
                        format="json")
    assert bad.status_code == 400 and "secrets" in bad.json()["error"]["fields"]


# --- the claim, and what a run reports ---------------------------------------------------------

def claimable(ws, secrets):
    queue, _ = WorkQueue.objects.get_or_create(workspace=ws, name="default")
    flow = factories.flow(ws)
    flow.register_version(entrypoint="m:f", secrets=secrets)
    return factories.flow_run(flow, work_queue=queue, flow_version=flow.latest_version,
                              scheduled_start=timezone.now() - timedelta(seconds=1))


def test_only_the_claim_of_a_run_whose_version_names_a_secret_carries_it(api, key_for, prefix, ws):
    secret_in(ws)
    secret_in(ws, name="OTHER", value="not-for-these-runs")
    needs, plain, missing = claimable(ws, ["DB_PASSWORD"]), claimable(ws, []), claimable(ws, ["NOPE", "DB_PASSWORD"])
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {key_for(Role.AGENT)}")
    agent_id = agent.post(f"{prefix}/agent/register", {"name": "a", "queues": ["default"]}, format="json").json()["id"]
    runs = {r["id"]: r for r in agent.post(f"{prefix}/agent/claim", {"agent_id": agent_id, "max_runs": 10},
                                             format="json").json()["runs"]}
    assert runs[str(needs.pk)]["secrets"] == {"DB_PASSWORD": VALUE} and runs[str(needs.pk)]["missing_secrets"] == []
    assert runs[str(plain.pk)]["secrets"] == {} and runs[str(plain.pk)]["env"] == {}
    assert runs[str(missing.pk)]["secrets"] == {"DB_PASSWORD": VALUE}
    assert runs[str(missing.pk)]["missing_secrets"] == ["NOPE"]
    # Nothing else ever shows it: the run's own page over the API.
    assert VALUE not in api.as_key(key_for(Role.OPERATOR)).get(f"{prefix}/flow_runs/{needs.pk}/").content.decode()


def test_the_server_redacts_a_runs_secrets_from_its_logs_messages_and_results(reporter, prefix, ws, flush_logs):
    secret_in(ws)
    run = claimable(ws, ["DB_PASSWORD"])
    run.state = State.RUNNING
    run.save()
    logs = reporter.post(f"{prefix}/agent/logs", {"logs": [
        {"flow_run_id": str(run.pk), "message": f"connecting with {VALUE}!"}]}, format="json")
    assert logs.status_code == 201
    task = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "t"}, format="json").json()
    reporter.post(f"{prefix}/agent/task_runs/{task['id']}/state", {"state": "RUNNING"}, format="json")
    done = reporter.post(f"{prefix}/agent/task_runs/{task['id']}/state",
                         {"state": "COMPLETED", "message": f"used {VALUE}", "result": {"password": VALUE}},
                         format="json")
    assert done.status_code == 200 and done.json()["result"] is None
    failed = reporter.post(f"{prefix}/agent/flow_runs/{run.pk}/state",
                           {"state": "FAILED", "message": f"RuntimeError: login as x/{VALUE} refused"}, format="json")
    assert failed.status_code == 200
    flush_logs()
    assert list(Log.objects.values_list("message", flat=True)) == ["connecting with ***!"]
    assert FlowRun.objects.get(pk=run.pk).state_message == "RuntimeError: login as x/*** refused"
    assert TaskRun.objects.get(pk=task["id"]).state_message == "used ***"
    assert not StateChange.objects.filter(message__contains=VALUE).exists()
    assert token_of(FlowRun.objects.get(pk=run.pk))  # the run is untouched otherwise


# --- the admin ---------------------------------------------------------------------------------

@pytest.fixture
def workspace_admin(client, ws):
    user = factories.member(ws, role=Role.ADMIN, is_staff=True)
    client.force_login(user)
    return client


def test_the_admin_writes_a_value_and_never_shows_it(workspace_admin, ws):
    page = workspace_admin.get("/admin/runs/secret/add/")
    assert page.status_code == 200
    answer = workspace_admin.post("/admin/runs/secret/add/", {"workspace": ws.pk, "name": "API_TOKEN", "value": VALUE})
    assert answer.status_code == 302, answer.content.decode()[-2000:]
    secret = Secret.objects.get(workspace=ws, name="API_TOKEN")
    assert vault.decrypt(secret.ciphertext) == VALUE
    for url in ("/admin/runs/secret/", f"/admin/runs/secret/{secret.pk}/change/"):
        shown = workspace_admin.get(url)
        assert shown.status_code == 200 and VALUE not in shown.content.decode()
        assert secret.ciphertext not in shown.content.decode()
    # A change without a value keeps it.
    kept = workspace_admin.post(f"/admin/runs/secret/{secret.pk}/change/", {"value": ""})
    assert kept.status_code == 302
    assert vault.decrypt(Secret.objects.get(pk=secret.pk).ciphertext) == VALUE


def test_the_admin_cannot_write_a_secret_into_another_workspace(workspace_admin, ws, other_ws):
    answer = workspace_admin.post("/admin/runs/secret/add/", {"workspace": other_ws.pk, "name": "X", "value": "y"})
    assert answer.status_code in (200, 403)  # the form refuses the choice, or the save is refused
    assert not Secret.objects.filter(workspace=other_ws).exists()
