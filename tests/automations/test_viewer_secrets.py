"""Viewers and operators read automations, but a Slack-compatible webhook's URL (its path is the
credential) and a webhook URL's query string or user info (tokens) are shown only to admins, who
may edit them; the dashboard's automation pages show what the API shows."""

import pytest

from runs.models import Role

from .conftest import automation, reactive

SLACK = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"
HOOK = "https://user:pw@example.com/hook?token=SECRETTOKEN"


@pytest.fixture
def with_destinations(bare_ws):
    return automation(bare_ws, reactive(["flow-run.state.failed"]), [
        {"type": "post-slack", "url": SLACK}, {"type": "call-webhook", "url": HOOK}])


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_a_non_admin_never_reads_a_destinations_credentials(api, key_for, prefix, with_destinations, role):
    client = api.as_key(key_for(role))
    for url in (f"{prefix}/automations/", f"{prefix}/automations/{with_destinations.pk}/"):
        response = client.get(url)
        assert response.status_code == 200
        text = response.content.decode()
        assert "XXXXSECRETXXXX" not in text and "SECRETTOKEN" not in text and "pw@" not in text, text
    enabled = client.post(f"{prefix}/automations/{with_destinations.pk}/disable/")
    assert "XXXXSECRETXXXX" not in enabled.content.decode()


def test_an_admin_reads_them_whole_to_edit_them(api, key_for, prefix, with_destinations):
    response = api.as_key(key_for(Role.ADMIN)).get(f"{prefix}/automations/{with_destinations.pk}/")
    assert [a["url"] for a in response.json()["actions"]] == [SLACK, HOOK]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_the_dashboard_page_shows_a_non_admin_no_credentials(bare_ws, with_destinations, role):
    from .test_dashboard import logged_in

    page = logged_in(bare_ws, role).get(f"/dashboard/automations/{with_destinations.pk}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "hooks.slack.com" in text  # the destination is shown, without its credentials
    assert "XXXXSECRETXXXX" not in text and "SECRETTOKEN" not in text and "pw@" not in text


def test_the_dashboard_page_shows_an_admin_the_whole_urls(bare_ws, with_destinations):
    from .test_dashboard import logged_in

    text = logged_in(bare_ws, Role.ADMIN).get(f"/dashboard/automations/{with_destinations.pk}/").content.decode()
    assert "XXXXSECRETXXXX" in text and "SECRETTOKEN" in text
