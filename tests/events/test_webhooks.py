"""Incoming webhooks: POST /hooks/<slug> → an event, signed when the webhook has a secret."""

import json

import pytest
from django.test import Client

from events.models import Event, IncomingWebhook
from events.webhooks import SIGNATURE_HEADER, TemplateError, check_template, event_for, signature
from runs.models import AuditEntry, Role
from tests import factories

pytestmark = pytest.mark.django_db


def hook(ws, **kw):
    return IncomingWebhook.objects.create(workspace=ws, name=kw.pop("name", f"hook-{factories.n()}"), **kw)


@pytest.fixture
def client():
    return Client(enforce_csrf_checks=True)  # as a browser-less sender meets it: CSRF on, and no token


def post(client, webhook, body=b"", content_type="application/json", **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(webhook.path if hasattr(webhook, "path") else webhook, data=data, content_type=content_type,
                       headers=headers)


def test_a_json_body_becomes_a_stored_event_of_the_webhook(ws, client, flush_events):
    webhook = hook(ws, name="ci")
    answer = post(client, webhook, {"kind": "build", "ok": True})
    assert answer.status_code == 202, answer.content
    event = flush_events().get()
    assert str(event.id) == answer.json()["id"]
    assert event.workspace_id == ws.pk
    assert event.name == "webhook.ci"
    assert event.resource == {"kind": "webhook", "id": str(webhook.pk), "name": "ci"}
    assert webhook.slug not in json.dumps(event.as_dict()), "the URL's secret part leaked into the event"
    assert event.payload == {"kind": "build", "ok": True}


def test_a_template_names_the_event_and_its_resource_from_the_body(ws, client, flush_events):
    webhook = hook(ws, name="deploys", template={
        "name": "deploy.{{ body.status }}",
        "resource": {"kind": "deploy", "id": "{{ body.deploy.id }}", "name": "{{ body.deploy.service }}"},
        "payload": {"service": "{{ body.deploy.service }}", "first_tag": "{{ body.tags.0 }}",
                    "summary": "{{ body.deploy.service }} is {{ body.status }} ({{ body.deploy.id }})",
                    "hook": "{{ webhook.name }}", "whole": "{{ body.deploy }}"}})
    body = {"status": "finished", "deploy": {"id": 42, "service": "api"}, "tags": ["v1.2", "prod"]}
    assert post(client, webhook, body).status_code == 202
    event = flush_events().get()
    assert event.name == "webhook.deploy.finished"
    assert event.resource == {"kind": "deploy", "id": "42", "name": "api"}
    assert event.related == [{"kind": "webhook", "id": str(webhook.pk), "name": "deploys"}]
    assert event.payload == {"service": "api", "first_tag": "v1.2", "summary": "api is finished (42)",
                             "hook": "deploys", "whole": {"id": 42, "service": "api"}}


def test_a_form_body_is_taken_as_its_fields(ws, client, flush_events):
    webhook = hook(ws, template={"name": "form.{{ body.action }}", "payload": "{{ body }}"})
    answer = client.post(webhook.path, data="action=opened&label=a&label=b",
                         content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 202, answer.content
    event = flush_events().get()
    assert event.name == "webhook.form.opened" and event.payload == {"action": "opened", "label": ["a", "b"]}


def test_a_body_that_is_not_an_object_is_kept_under_body(ws, client, flush_events):
    assert post(client, hook(ws), [1, 2, 3]).status_code == 202
    assert flush_events().get().payload == {"body": [1, 2, 3]}


@pytest.fixture
def signed(ws):
    factories.secret(ws, name="HOOK_KEY", value="correct horse")
    return hook(ws, secret_name="HOOK_KEY")


def test_a_correct_signature_is_accepted(signed, client, flush_events):
    body = json.dumps({"n": 1}).encode()
    answer = post(client, signed, body, **{SIGNATURE_HEADER: signature("correct horse", body)})
    assert answer.status_code == 202, answer.content
    assert flush_events().count() == 1


@pytest.mark.parametrize("header", [None, "", "sha256=00", "sha256=" + "0" * 64, "wrong-key", "other-body"])
def test_a_missing_or_wrong_signature_is_refused_and_emits_nothing(signed, client, flush_events, header):
    body = json.dumps({"n": 1}).encode()
    if header == "wrong-key":
        header = signature("wrong horse", body)
    elif header == "other-body":
        header = signature("correct horse", b'{"n": 2}')
    headers = {} if header is None else {SIGNATURE_HEADER: header}
    answer = post(client, signed, body, **headers)
    assert answer.status_code == 401
    assert SIGNATURE_HEADER in answer.json()["detail"]
    assert not flush_events().exists()


def test_a_webhook_whose_secret_is_gone_refuses_everything(signed, client, flush_events):
    signed.workspace.secrets.all().delete()
    body = b"{}"
    assert post(client, signed, body, **{SIGNATURE_HEADER: signature("correct horse", body)}).status_code == 401
    assert not flush_events().exists()


def test_an_unknown_or_disabled_slug_is_404_and_only_post_is_taken(ws, client):
    assert post(client, "/hooks/" + "x" * 43, {}).status_code == 404
    disabled = hook(ws, enabled=False)
    assert post(client, disabled, {}).status_code == 404
    answer = client.get(hook(ws).path)
    assert answer.status_code == 405 and answer["Allow"] == "POST"


def test_slugs_are_unguessable_tokens(ws):
    slugs = {hook(ws).slug for _ in range(5)}
    assert len(slugs) == 5 and all(len(slug) >= 32 for slug in slugs)


def test_an_oversize_body_is_413(ws, client, settings, flush_events):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "WEBHOOK_MAX_BODY_BYTES": 1000}
    webhook = hook(ws)
    assert post(client, webhook, {"x": "a" * 2000}).status_code == 413
    assert post(client, webhook, {"x": "a" * 900}).status_code == 202
    assert flush_events().count() == 1


@pytest.mark.parametrize("body, words", [
    (b"{not json", "not JSON"),
    (b'{"x": NaN}', "finite"),
    (b"[" * 200 + b"]" * 200, "levels deep"),
    (b'{"x": "\\u0000"}', "NUL"),
    (b"\xff\xfe", "UTF-8"),
])
def test_a_body_that_cannot_be_read_is_400_naming_the_problem(ws, client, body, words):
    answer = post(client, hook(ws), body)
    assert answer.status_code == 400
    assert words in answer.json()["detail"]


def test_a_missing_path_is_400_naming_it(ws, client, flush_events):
    webhook = hook(ws, template={"name": "x.{{ body.repo.name }}"})
    answer = post(client, webhook, {"repo": {"id": 1}})
    assert answer.status_code == 400
    assert "{{ body.repo.name }}" in answer.json()["detail"] and "body.repo has no 'name'" in answer.json()["detail"]
    assert post(client, webhook, {"repo": "flat"}).status_code == 400
    assert post(client, webhook, {"tags": []}).status_code == 400
    assert not flush_events().exists()


@pytest.mark.parametrize("template, words", [
    ({"name": "a b"}, "event name"),
    ({"name": "{{ body }}"}, "event name"),
    ({"name": "x", "resource": {"kind": "k"}}, "kind and an id"),
    ({"name": "x", "resource": {"kind": "k", "id": "{{ body }}"}}, "must render to text"),
])
def test_a_template_that_renders_badly_is_400(ws, client, template, words):
    answer = post(client, hook(ws, template=template), {"a": 1})
    assert answer.status_code == 400 and words in answer.json()["detail"]


def nested(depth):
    node = "{{ body }}"
    for _ in range(depth):
        node = {"n": node}
    return node


@pytest.mark.parametrize("template, words", [
    ("a string", "JSON object"),
    ({"name": "x", "extra": 1}, "Unknown template keys"),
    ({"name": 5}, "must be a string"),
    ({"name": "x", "payload": nested(20)}, "levels deep"),
    ({"name": "x", "payload": {str(i): "{{ body }}" for i in range(100)}}, "placeholders"),
    ({"name": "x", "payload": "x" * 20000}, "larger than"),
    ({"name": "{{ body.__class__ }}x{{ os.system }}"}, "start with body or webhook"),
    ({"name": "{{ body[0] }}"}, "dotted path"),
    ({"name": "{{ " + ".a" * 40 + " }}"}, "dotted path"),
])
def test_templates_past_their_bounds_are_refused_when_saved(template, words):
    with pytest.raises(TemplateError) as refused:
        check_template(template)
    assert words in str(refused.value)


def test_rendering_is_bounded_by_the_event_size(ws):
    webhook = hook(ws, template={"name": "x", "payload": {str(i): "{{ body.blob }}{{ body.blob }}" for i in range(30)}})
    with pytest.raises(TemplateError, match="larger than"):
        event_for(webhook, {"blob": "a" * 50_000})


def test_a_webhook_is_throttled_per_slug(ws, client, settings):
    from runs.api.throttles import counter_cache

    counter_cache.reset()
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "WEBHOOK_THROTTLE_RATE": "3/hour"}
    busy, quiet = hook(ws), hook(ws)
    statuses = [post(client, busy, {}).status_code for _ in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    assert post(client, quiet, {}).status_code == 202


# --- the API ------------------------------------------------------------------------------------

def url(prefix, rest=""):
    return f"{prefix}/webhooks/{rest}"


def test_admins_create_a_webhook_and_get_its_url(api, prefix, key_for, ws, client, flush_events):
    factories.secret(ws, name="HOOK_KEY", value="v3ry-secret")
    api.as_key(key_for(Role.ADMIN))
    answer = api.post(url(prefix), {"name": "deploys", "secret_name": "HOOK_KEY",
                                    "template": {"name": "deploy.{{ body.status }}"}}, format="json")
    assert answer.status_code == 201, answer.content
    data = answer.json()
    assert data["url"].endswith(f"/hooks/{data['slug']}") and len(data["slug"]) >= 32
    assert "v3ry-secret" not in answer.content.decode()
    body = b'{"status": "done"}'
    sent = post(client, data["url"].split("testserver")[-1], body,
                **{SIGNATURE_HEADER: signature("v3ry-secret", body)})
    assert sent.status_code == 202
    assert flush_events().get().name == "webhook.deploy.done"
    assert AuditEntry.objects.filter(action="incoming_webhook.create", target_name="deploys").exists()
    assert data["slug"] not in json.dumps(list(AuditEntry.objects.values("before", "after")))


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_only_admins_see_webhooks(api, prefix, key_for, ws, role):
    hook(ws)
    api.as_key(key_for(role))
    assert api.get(url(prefix)).status_code == 403


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "secret_name": "NO_SUCH_SECRET"}, "secret_name"),
    ({"name": "x", "template": {"name": "{{ os.environ }}"}}, "template"),
    ({"name": "has space"}, "name"),
])
def test_a_bad_webhook_is_400_naming_the_field(api, prefix, key_for, body, field):
    api.as_key(key_for(Role.ADMIN))
    answer = api.post(url(prefix), body, format="json")
    assert answer.status_code == 400
    assert field in answer.json()["error"]["fields"]


def test_a_taken_name_is_400(api, prefix, key_for, ws):
    hook(ws, name="dup")
    api.as_key(key_for(Role.ADMIN))
    answer = api.post(url(prefix), {"name": "dup"}, format="json")
    assert answer.status_code == 400 and "name" in answer.json()["error"]["fields"]


def test_rotating_gives_a_new_url_and_the_old_one_is_gone(api, prefix, key_for, ws, client):
    webhook = hook(ws)
    old = webhook.path
    api.as_key(key_for(Role.ADMIN))
    answer = api.post(url(prefix, f"{webhook.pk}/rotate/"))
    assert answer.status_code == 200
    assert post(client, old, {}).status_code == 404
    assert post(client, f"/hooks/{answer.json()['slug']}", {}).status_code == 202


def test_disabling_and_deleting_close_the_url(api, prefix, key_for, ws, client):
    webhook = hook(ws)
    api.as_key(key_for(Role.ADMIN))
    assert api.patch(url(prefix, f"{webhook.pk}/"), {"enabled": False}, format="json").status_code == 200
    assert post(client, webhook, {}).status_code == 404
    assert api.delete(url(prefix, f"{webhook.pk}/")).status_code == 204
    assert not IncomingWebhook.objects.exists()


def test_another_workspaces_webhook_is_not_reachable(api, prefix, key_for, other_ws):
    theirs = hook(other_ws)
    api.as_key(key_for(Role.ADMIN))
    assert api.get(url(prefix, f"{theirs.pk}/")).status_code == 404
    assert theirs.slug not in api.get(url(prefix)).content.decode()


def test_deleting_the_workspace_deletes_its_webhooks(ws):
    hook(ws)
    ws.delete()
    assert not IncomingWebhook.objects.exists()
    assert not Event.objects.exists()


def test_the_readmes_openssl_recipe_makes_the_signature_the_server_expects():
    import re
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    recipe = re.search(r"^SIG=\"(.*)\"$", readme, re.M)[1]
    body = '{"status": "finished", "deploy": {"id": 42}}'
    made = subprocess.run(["bash", "-c", f'echo "{recipe}"'], capture_output=True, text=True, check=True,
                          env={"BODY": body, "DEPLOY_HOOK_KEY": "k3y", "PATH": "/usr/bin:/bin"}).stdout.strip()
    assert made == signature("k3y", body.encode())


def test_a_webhook_cannot_forge_the_servers_own_events(ws, client, flush_events):
    """Whoever holds a webhook's URL must not be able to send `flow-run.heartbeat` for a run (the
    crash default would then crash it 5 minutes later) or `automation.fired` (the loop guard): a
    webhook's events are always named webhook.<…>, and no automation of the server's names fires."""
    from automations import proactive
    from automations.models import Firing, TriggerBucket

    run = factories.flow_run(factories.flow(ws), state="RUNNING")
    for name in ("flow-run.heartbeat", "automation.fired", "flow-run.state.crashed"):
        webhook = hook(ws, template={"name": name, "resource": {"kind": "flow-run", "id": str(run.pk)}})
        assert post(client, webhook, {}).status_code == 202
    stored = sorted(flush_events().values_list("name", flat=True))
    assert stored == ["webhook.automation.fired", "webhook.flow-run.heartbeat", "webhook.flow-run.state.crashed"]
    assert not TriggerBucket.objects.exists()
    from django.utils import timezone
    from datetime import timedelta
    proactive.run_once(timezone.now() + timedelta(hours=1))
    assert not Firing.objects.exists()
