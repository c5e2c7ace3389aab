"""The automations pages: the list with its switch (htmx and plain form), and the edit page."""

import json

import pytest
from django.test import Client

from automations.models import Automation, Firing
from runs.models import AuditEntry, Role
from tests import factories

from .conftest import at

pytestmark = pytest.mark.django_db


def logged_in(ws, role):
    client = Client()
    client.force_login(factories.member(ws, role=role))
    return client


@pytest.fixture
def failing(ws):
    a = Automation.objects.get(workspace=ws, default_key="service-failing")
    Firing.objects.bulk_create([Firing(automation=a, workspace=ws, fired=at(i), reason=f"reason {i}",
                                       results=[{"type": "send-email", "ok": i % 2 == 0, "detail": f"d{i}"}])
                                for i in range(7)])
    return a


def test_the_list_shows_triggers_in_words_switches_and_the_last_five_firings(ws, failing,
                                                                              django_assert_max_num_queries):
    client = logged_in(ws, Role.OPERATOR)
    with django_assert_max_num_queries(10):
        page = client.get("/dashboard/automations/").content.decode()
    assert "3 × service.failed within 1 h (each resource apart)" in page
    assert "no flow-run.heartbeat or flow-run.state.completed or flow-run.state.failed (+4 more) within 5 min" in page
    assert page.count('role="switch"') == 3
    assert "reason 6" in page and "reason 2" in page and "reason 1" not in page  # the last five
    assert "send-email: failed (d5)" in page
    assert 'aria-current="page">Automations' in page


def test_the_switch_works_with_htmx_and_without_javascript(ws, failing):
    client = logged_in(ws, Role.OPERATOR)
    row = client.post(f"/dashboard/automations/{failing.pk}/toggle/", {"enabled": "0"}, HTTP_HX_REQUEST="true")
    assert row.status_code == 200 and 'aria-checked="false"' in row.content.decode()
    assert row.content.decode().lstrip().startswith(f'<tr id="automation-{failing.pk}"')
    failing.refresh_from_db()
    assert failing.enabled is False
    plain = client.post(f"/dashboard/automations/{failing.pk}/toggle/", {"enabled": "1"})
    assert plain.status_code == 302 and plain["Location"] == "/dashboard/automations/"
    failing.refresh_from_db()
    assert failing.enabled is True
    assert list(AuditEntry.objects.filter(target_type="automation").values_list("action", "via").order_by("pk")) == [
        ("automation.disable", "dashboard"), ("automation.enable", "dashboard")]


def test_viewers_see_no_switch_and_cannot_toggle(ws, failing):
    client = logged_in(ws, Role.VIEWER)
    page = client.get("/dashboard/automations/").content.decode()
    assert 'role="switch"' not in page and "ON" in page
    assert client.post(f"/dashboard/automations/{failing.pk}/toggle/", {"enabled": "0"}).status_code == 403
    failing.refresh_from_db()
    assert failing.enabled is True


def test_another_workspaces_automations_are_not_found(ws, other_ws):
    theirs = Automation.objects.filter(workspace=other_ws).first()
    client = logged_in(ws, Role.ADMIN)
    assert theirs.name not in client.get("/dashboard/automations/").content.decode() or \
        Automation.objects.filter(workspace=ws, name=theirs.name).exists()
    assert client.get(f"/dashboard/automations/{theirs.pk}/").status_code == 404
    assert client.post(f"/dashboard/automations/{theirs.pk}/toggle/", {"enabled": "0"}).status_code == 404


def form_data(a, **changes):
    return {"name": a.name, "description": a.description, "enabled": "on" if a.enabled else "",
            "trigger": json.dumps(a.trigger), "actions": json.dumps(a.actions), **changes}


def test_an_admin_edits_an_automation_and_sees_its_firings(ws, failing):
    client = logged_in(ws, Role.ADMIN)
    page = client.get(f"/dashboard/automations/{failing.pk}/").content.decode()
    assert '<label for="id_trigger">Trigger</label>' in page and "reason 6" in page and "reason 0" in page
    trigger = {**failing.trigger, "threshold": 5}
    response = client.post(f"/dashboard/automations/{failing.pk}/",
                           form_data(failing, trigger=json.dumps(trigger), name="Renamed"))
    assert response.status_code == 200 and "Saved." in response.content.decode()
    failing.refresh_from_db()
    assert (failing.name, failing.trigger["threshold"]) == ("Renamed", 5)
    assert AuditEntry.objects.get(action="automation.change").via == "dashboard"


def test_validation_errors_are_shown_next_to_their_field(ws, failing):
    client = logged_in(ws, Role.ADMIN)
    response = client.post(f"/dashboard/automations/{failing.pk}/",
                           form_data(failing, trigger=json.dumps({**failing.trigger, "within": 99_999_999})))
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="id_trigger-errors" role="alert">trigger.within: at most 2592000 seconds' in page
    assert 'aria-describedby="id_trigger-errors"' in page and 'aria-invalid="true"' in page
    bad_json = client.post(f"/dashboard/automations/{failing.pk}/", form_data(failing, actions="[{"))
    assert 'id="id_actions-errors"' in bad_json.content.decode() and "Not valid JSON" in bad_json.content.decode()
    failing.refresh_from_db()
    assert failing.trigger["within"] == 3600


def test_operators_read_the_page_but_cannot_edit(ws, failing):
    client = logged_in(ws, Role.OPERATOR)
    page = client.get(f"/dashboard/automations/{failing.pk}/").content.decode()
    assert "admins edit them" in page and "disabled" in page and ">Save<" not in page
    assert client.post(f"/dashboard/automations/{failing.pk}/", form_data(failing, name="x")).status_code == 403
