"""Who made a manual run, as the dashboard's run page and the admin show it (a service key has no person)."""

import pytest

from runs.models import Role
from runs.scheduling import create_manual_run
from tests import factories


@pytest.fixture
def key_run(ws):
    key, _ = factories.api_key(ws, role=Role.OPERATOR, name="ci-deploys")
    return create_manual_run(factories.flow(ws), api_key=key)[0]


def made_by(html):
    return html.split("<dt>Made by</dt><dd>", 1)[1].split("</dd>", 1)[0]


def test_the_run_page_names_the_service_key_that_made_a_run(as_operator, key_run):
    assert made_by(as_operator.get(f"/dashboard/runs/{key_run.pk}/").content.decode()) == "API key ci-deploys"


def test_the_run_page_names_person_and_key_for_a_persons_key(as_operator, operator, ws):
    key, _ = factories.api_key(ws, role=Role.OPERATOR, user=operator, name="laptop")
    run = create_manual_run(factories.flow(ws), user=operator, api_key=key)[0]
    page = as_operator.get(f"/dashboard/runs/{run.pk}/").content.decode()
    assert made_by(page) == f"{operator.username} with API key laptop"


def test_the_admin_shows_the_key_that_made_a_run_read_only(admin_client, key_run):
    page = admin_client.get(f"/admin/runs/flowrun/{key_run.pk}/change/").content.decode()
    assert "Created by key" in page and "ci-deploys" in page
    assert 'name="created_by_key"' not in page  # a record, not a choice of every workspace's keys
