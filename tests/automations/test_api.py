"""The automations API: validation names the field, writes are audited, roles are enforced."""

import pytest
from django.core.exceptions import ValidationError

from automations import changes
from automations.models import Automation, Firing, TriggerBucket
from runs.models import AuditEntry, Role

from .conftest import at, automation, reactive

pytestmark = pytest.mark.django_db

TRIGGER = {"type": "event", "posture": "reactive", "match": {"name": ["flow-run.state.failed"]},
           "threshold": 3, "within": 600, "for_each": "resource"}


@pytest.fixture(autouse=True)
def private_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "automations-api-tests"}}


def as_role(api, key_for, role):
    return api.as_key(key_for(role))


def fields_of(response):
    assert response.status_code == 400, response.content
    return response.json()["error"]["fields"]


def test_an_admin_creates_an_automation_with_its_entry(api, key_for, prefix, ws):
    response = as_role(api, key_for, Role.ADMIN).post(f"{prefix}/automations/", {
        "name": "Flaky", "trigger": TRIGGER, "actions": [{"type": "mark-crashed"}]}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["trigger"] == TRIGGER and body["enabled"] is True
    assert body["trigger_summary"] == "3 × flow-run.state.failed within 10 min (each resource apart)"
    entry = AuditEntry.objects.get(action="automation.create")
    assert (entry.workspace_id, entry.target_id, entry.after["name"]) == (ws.pk, str(body["id"]), "Flaky")


@pytest.mark.parametrize("trigger, field", [
    ({**TRIGGER, "within": 40 * 86400}, "trigger.within"),
    ({**TRIGGER, "within": 0}, "trigger.within"),
    ({**TRIGGER, "threshold": 10_001}, "trigger.threshold"),
    ({**TRIGGER, "threshold": "3"}, "trigger.threshold"),
    ({**TRIGGER, "match": {"name": ["x"] * 21}}, "trigger.match.name"),
    ({**TRIGGER, "match": {"name": ["x" * 201]}}, "trigger.match.name[0]"),
    ({**TRIGGER, "match": {"name": []}}, "trigger.match.name"),
    ({**TRIGGER, "match": {"name": ["a"], "colour": ["red"]}}, "trigger.match.colour"),
    ({**TRIGGER, "for_each": "flow"}, "trigger.for_each"),
    ({**TRIGGER, "posture": "sideways"}, "trigger.posture"),
    ({"type": "event", "posture": "proactive", "after": ["a"], "within": 60}, "trigger.expect"),
    ({"type": "compound", "require": "all", "triggers": [TRIGGER]}, "trigger.triggers"),
    ({"type": "compound", "require": "most", "triggers": [TRIGGER, TRIGGER]}, "trigger.require"),
    ({"type": "compound", "triggers": [TRIGGER, {**TRIGGER, "within": -1}]}, "trigger.triggers[1].within"),
    ({"type": "nope"}, "trigger.type"),
    ([1, 2], "trigger"),
])
def test_a_bad_trigger_is_a_400_naming_the_field(api, key_for, prefix, trigger, field):
    response = as_role(api, key_for, Role.ADMIN).post(f"{prefix}/automations/", {
        "name": "Bad", "trigger": trigger, "actions": []}, format="json")
    assert field in fields_of(response)
    assert not Automation.objects.filter(name="Bad").exists()


def test_actions_are_validated_by_the_actions_contract(api, key_for, prefix, monkeypatch):
    def validate_actions(data, workspace):
        raise ValidationError({"actions[0].url": ["must be an http(s) URL"]})

    monkeypatch.setattr(changes, "validate_actions", validate_actions)
    response = as_role(api, key_for, Role.ADMIN).post(f"{prefix}/automations/", {
        "name": "Hook", "trigger": TRIGGER, "actions": [{"type": "call-webhook", "url": "ftp://x"}]}, format="json")
    assert fields_of(response) == {"actions[0].url": ["must be an http(s) URL"]}


def test_a_duplicate_name_is_a_400(api, key_for, prefix, ws):
    response = as_role(api, key_for, Role.ADMIN).post(f"{prefix}/automations/", {
        "name": "Crash runs without a heartbeat", "trigger": TRIGGER}, format="json")
    assert "name" in fields_of(response)


def test_an_admin_edits_and_the_changed_trigger_starts_over(api, key_for, prefix, ws):
    a = automation(ws, TRIGGER, name="Edited")
    TriggerBucket.objects.create(automation=a, key="flow-run:1", count=2)
    response = as_role(api, key_for, Role.ADMIN).patch(f"{prefix}/automations/{a.pk}/",
                                                       {"trigger": {**TRIGGER, "threshold": 5}}, format="json")
    assert response.status_code == 200, response.content
    assert not TriggerBucket.objects.filter(automation=a).exists()
    entry = AuditEntry.objects.get(action="automation.change")
    assert entry.before["trigger"]["threshold"] == 3 and entry.after["trigger"]["threshold"] == 5


def test_operators_enable_and_disable_but_do_not_edit(api, key_for, prefix, ws):
    a = Automation.objects.get(workspace=ws, default_key="service-failing")
    TriggerBucket.objects.create(automation=a, key="service:lazarus", count=2)
    client = as_role(api, key_for, Role.OPERATOR)
    assert client.post(f"{prefix}/automations/{a.pk}/disable/").json()["enabled"] is False
    assert not TriggerBucket.objects.filter(automation=a).exists()  # what it counted is dropped
    assert client.post(f"{prefix}/automations/{a.pk}/disable/").status_code == 200  # no change, no entry
    assert client.post(f"{prefix}/automations/{a.pk}/enable/").json()["enabled"] is True
    assert list(AuditEntry.objects.filter(target_type="automation").order_by("pk").values_list("action", flat=True)) \
        == ["automation.disable", "automation.enable"]
    assert client.patch(f"{prefix}/automations/{a.pk}/", {"name": "x"}, format="json").status_code == 403
    assert client.delete(f"{prefix}/automations/{a.pk}/").status_code == 403
    viewer = as_role(api, key_for, Role.VIEWER)
    assert viewer.post(f"{prefix}/automations/{a.pk}/enable/").status_code == 403
    assert viewer.get(f"{prefix}/automations/").status_code == 200


def test_an_automation_without_a_destination_cannot_be_enabled_until_it_has_one(api, key_for, prefix, ws):
    notify = Automation.objects.get(workspace=ws, default_key="notify-failed-runs")
    response = as_role(api, key_for, Role.OPERATOR).post(f"{prefix}/automations/{notify.pk}/enable/")
    assert fields_of(response) == {"actions[0].to": [changes.NO_DESTINATION]}
    notify.refresh_from_db()
    assert notify.enabled is False
    admin = as_role(api, key_for, Role.ADMIN)
    edit = admin.patch(f"{prefix}/automations/{notify.pk}/", {"enabled": True}, format="json")
    assert fields_of(edit) == {"actions[0].to": [changes.NO_DESTINATION]}
    made = admin.post(f"{prefix}/automations/", {"name": "Hook nowhere", "trigger": TRIGGER,
                                                 "actions": [{"type": "call-webhook", "url": ""}]}, format="json")
    assert fields_of(made) == {"actions[0].url": [changes.NO_DESTINATION]}
    notify.refresh_from_db()
    assert notify.enabled is False
    # With a destination it turns on.
    fixed = admin.patch(f"{prefix}/automations/{notify.pk}/", {"enabled": True, "actions": [
        {"type": "send-email", "to": ["ops@example.com"]}]}, format="json")
    assert fixed.status_code == 200 and fixed.json()["enabled"] is True


def test_an_admin_deletes_with_an_entry(api, key_for, prefix, ws):
    a = automation(ws, TRIGGER, name="Doomed")
    assert as_role(api, key_for, Role.ADMIN).delete(f"{prefix}/automations/{a.pk}/").status_code == 204
    assert AuditEntry.objects.get(action="automation.delete").before["name"] == "Doomed"


def test_firings_are_listed_newest_first_in_pages(api, key_for, prefix, ws):
    a = automation(ws, reactive(["service.failed"]), name="Pages")
    Firing.objects.bulk_create([Firing(automation=a, workspace=ws, fired=at(i), reason=f"r{i}") for i in range(5)])
    client = as_role(api, key_for, Role.VIEWER)
    first = client.get(f"{prefix}/automations/{a.pk}/firings/?page_size=3").json()
    assert [f["reason"] for f in first["results"]] == ["r4", "r3", "r2"]
    second = client.get(first["next"]).json()
    assert [f["reason"] for f in second["results"]] == ["r1", "r0"]


def test_another_workspaces_automation_is_not_found(api, key_for, prefix, other_ws):
    theirs = Automation.objects.filter(workspace=other_ws).first()
    assert as_role(api, key_for, Role.ADMIN).get(f"{prefix}/automations/{theirs.pk}/").status_code == 404


@pytest.mark.parametrize("bad", ["²", "١٢", "99999999999999999999999", -1, [1], {"id": 1}, True],
                         ids=["superscript-two", "arabic-digits", "past-bigint", "negative", "list", "object", "bool"])
@pytest.mark.parametrize("kind,field", [("pause-schedule", "schedule_id"), ("run-flow", "flow_id"),
                                        ("cancel-run", "flow_run_id"), ("pause-queue", "work_queue_id")])
def test_an_id_that_is_not_a_plain_number_is_a_400_naming_it(api, key_for, prefix, kind, field, bad):
    """"²".isdigit() is True but int("²") raises: before the fix, a 500."""
    response = as_role(api, key_for, Role.ADMIN).post(f"{prefix}/automations/", {
        "name": "odd id", "trigger": reactive(["flow-run.state.failed"]), "actions": [{"type": kind, field: bad}]},
        format="json")
    assert response.status_code == 400, response.content[:300]
    assert f"actions[0].{field}" in fields_of(response)


@pytest.mark.parametrize("odd", ["²", "99999999999999999999999"])
def test_an_odd_id_in_an_event_fails_the_action_not_the_firing(ws, odd):
    """The ids an action takes from its events are anyone's text (incoming webhooks make events)."""
    from automations.engine import on_events

    from .conftest import event

    Automation.objects.filter(workspace=ws).delete()
    auto = automation(ws, reactive(["webhook.x"]), [{"type": "pause-schedule"}])
    on_events([event(ws, "webhook.x", kind="schedule", id=odd)], at(0))
    [firing] = Firing.objects.filter(automation=auto)
    assert firing.results == [{"type": "pause-schedule", "ok": False,
                               "detail": f"schedule {odd} no longer exists in this workspace"}]
