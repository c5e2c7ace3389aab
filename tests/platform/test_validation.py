"""Bad schedule input never reaches the database: each error names its field."""

import pytest
from django.core.exceptions import ValidationError

from runs.models import Role, Schedule
from tests import factories

BAD_INPUT = [
    ({"kind": "cron", "cron": "61 * * * *"}, "cron"),
    ({"kind": "cron", "cron": "* * *"}, "cron"),
    ({"kind": "cron", "cron": ""}, "cron"),
    ({"kind": "interval", "interval_seconds": 0}, "interval_seconds"),
    ({"kind": "interval", "interval_seconds": None}, "interval_seconds"),
    ({"kind": "interval", "interval_seconds": 60, "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"kind": "rrule", "rrule": "RRULE:FREQ=SOMETIMES"}, "rrule"),
    ({"kind": "hourly-ish"}, "kind"),
]


@pytest.fixture
def flow(ws):
    return factories.flow(ws, name="etl")


@pytest.mark.parametrize("fields,bad_field", BAD_INPUT)
def test_api_rejects_bad_schedule_naming_the_field(api, key_for, prefix, flow, fields, bad_field):
    body = {"flow": "etl", "slug": "s", **{k: v for k, v in fields.items() if v is not None}}
    response = api.as_key(key_for(Role.ADMIN)).post(f"{prefix}/schedules/", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert bad_field in error["fields"], error
    assert bad_field in error["message"]
    assert not Schedule.objects.exists()


@pytest.mark.parametrize("fields,bad_field", [case for case in BAD_INPUT if case[1] != "timezone"])
def test_model_validation_names_the_field(flow, fields, bad_field):
    schedule = Schedule(flow=flow, slug="s", **fields)
    with pytest.raises(ValidationError) as raised:
        schedule.full_clean()
    assert bad_field in raised.value.message_dict


def test_api_creates_a_valid_schedule_and_its_next_runs_at_once(api, key_for, prefix, flow):
    response = api.as_key(key_for(Role.ADMIN)).post(
        f"{prefix}/schedules/",
        {"flow": "etl", "slug": "nightly", "kind": "cron", "cron": "0 2 * * *", "timezone": "Europe/London"},
        format="json",
    )
    assert response.status_code == 201, response.content
    schedule = Schedule.objects.get(slug="nightly")
    assert schedule.runs.count() == 10
    assert "02:00" in response.json()["description_text"]


def test_duplicate_slug_in_a_flow_is_a_400_on_slug(api, key_for, prefix, flow):
    factories.schedule(flow, slug="nightly")
    response = api.as_key(key_for(Role.ADMIN)).post(
        f"{prefix}/schedules/", {"flow": "etl", "slug": "nightly", "kind": "interval", "interval_seconds": 60},
        format="json",
    )
    assert response.status_code == 400 and "slug" in response.json()["error"]["fields"]


def test_a_flow_of_another_workspace_cannot_be_named(api, key_for, prefix, other_ws):
    factories.flow(other_ws, name="theirs")
    response = api.as_key(key_for(Role.ADMIN)).post(
        f"{prefix}/schedules/", {"flow": "theirs", "slug": "x", "kind": "interval", "interval_seconds": 60},
        format="json",
    )
    assert response.status_code == 400 and "flow" in response.json()["error"]["fields"]


def test_malformed_json_is_400_not_500(api, key_for, prefix):
    response = api.as_key(key_for(Role.ADMIN)).post(
        f"{prefix}/schedules/", data="{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "error" in response.json()
