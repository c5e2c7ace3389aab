"""The schedules API: preview without saving, next runs on a schedule, bad input, runs within the request."""

import pytest
from django.utils import timezone

from runs.models import FlowRun, Role, Schedule, ScheduleStatus
from tests import factories


@pytest.fixture
def flow(ws):
    return factories.flow(ws, name="etl")


CALENDAR = {"base": {"rule": "last_business_day_of_month"}, "holidays": {"country": "US"}, "times": ["17:00"]}


def test_viewer_previews_a_definition_without_saving_it(api, key_for, prefix, flow):
    body = {"kind": "calendar", "calendar": CALENDAR, "timezone": "America/New_York"}
    response = api.as_key(key_for(Role.VIEWER)).post(f"{prefix}/schedules/preview/", body, format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    assert len(data["next_runs"]) == 10
    assert all(r["local"].startswith(r["local"][:10]) and "T17:00:00" in r["local"] for r in data["next_runs"])
    assert data["next_runs"][0]["utc"] > timezone.now().isoformat()[:19]
    assert data["description_text"].startswith("Last business day of the month")
    assert not Schedule.objects.exists() and not FlowRun.objects.exists()


@pytest.mark.parametrize("count, status, length", [(3, 200, 3), (100, 200, 100), (101, 400, 0), (0, 400, 0),
                                                   ("ten", 400, 0)])
def test_preview_count_defaults_to_ten_and_is_capped_at_a_hundred(api, key_for, prefix, count, status, length):
    body = {"kind": "interval", "interval_seconds": 60, "count": count}
    response = api.as_key(key_for(Role.VIEWER)).post(f"{prefix}/schedules/preview/", body, format="json")
    assert response.status_code == status, response.content
    if status == 200:
        assert len(response.json()["next_runs"]) == length
    else:
        assert "count" in response.json()["error"]["fields"]


@pytest.mark.parametrize("fields, bad_field", [
    ({"kind": "cron", "cron": "61 * * * *"}, "cron"),
    ({"kind": "rrule", "rrule": "RRULE:FREQ=SOMETIMES"}, "rrule"),
    ({"kind": "interval", "interval_seconds": 0}, "interval_seconds"),
    ({"kind": "interval", "interval_seconds": 60, "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"kind": "calendar", "calendar": {**CALENDAR, "holidays": {"country": "XX"}}}, "calendar"),
])
def test_bad_definitions_are_400_naming_the_field_on_preview_and_create(api, key_for, prefix, flow, fields,
                                                                         bad_field):
    client = api.as_key(key_for(Role.ADMIN))
    for url, body in ((f"{prefix}/schedules/preview/", fields), (f"{prefix}/schedules/", {"flow": "etl", "slug": "s", **fields})):
        response = client.post(url, body, format="json")
        assert response.status_code == 400, response.content
        assert bad_field in response.json()["error"]["fields"]
    assert not Schedule.objects.exists()


def test_unknown_holiday_country_message_says_what_is_wrong(api, key_for, prefix, flow):
    body = {"flow": "etl", "slug": "s", "kind": "calendar", "calendar": {**CALENDAR, "holidays": {"country": "XX"}}}
    response = api.as_key(key_for(Role.ADMIN)).post(f"{prefix}/schedules/", body, format="json")
    assert "'XX' is not a supported country code" in response.json()["error"]["fields"]["calendar"][0]


def test_a_schedule_shows_its_next_runs_and_the_list_does_not(api, key_for, prefix, flow):
    s = factories.schedule(flow, slug="hourly", interval_seconds=3600)
    client = api.as_key(key_for(Role.VIEWER))
    detail = client.get(f"{prefix}/schedules/{s.pk}/").json()
    assert len(detail["next_runs"]) == 10 and detail["description_text"] == "Every hour"
    listed = client.get(f"{prefix}/schedules/").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert rows[0]["next_runs"] is None


def test_a_new_calendar_schedule_has_its_next_ten_runs_when_the_request_returns(api, key_for, prefix, flow):
    body = {"flow": "etl", "slug": "month-end", "kind": "calendar", "calendar": CALENDAR,
            "timezone": "America/New_York"}
    response = api.as_key(key_for(Role.ADMIN)).post(f"{prefix}/schedules/", body, format="json")
    assert response.status_code == 201, response.content
    runs = FlowRun.objects.filter(schedule_slug="month-end", auto_scheduled=True)
    assert runs.count() == 10 and not runs.filter(scheduled_start__lte=timezone.now()).exists()


def test_a_resumed_schedule_has_its_next_ten_runs_when_the_request_returns(api, key_for, prefix, flow):
    s = factories.schedule(flow, slug="r", interval_seconds=600, status=ScheduleStatus.PAUSED)
    response = api.as_key(key_for(Role.OPERATOR)).post(f"{prefix}/schedules/{s.pk}/resume/")
    assert response.status_code == 200 and response.json()["runs_created"] == 10
    assert FlowRun.objects.filter(schedule=s, scheduled_start__gt=timezone.now()).count() == 10


def test_deleting_a_schedule_over_the_api_removes_its_future_runs(api, key_for, prefix, flow):
    body = {"flow": "etl", "slug": "gone", "kind": "cron", "cron": "*/5 * * * *"}
    client = api.as_key(key_for(Role.ADMIN))
    schedule_id = client.post(f"{prefix}/schedules/", body, format="json").json()["id"]
    assert client.delete(f"{prefix}/schedules/{schedule_id}/").status_code == 202
    assert not FlowRun.objects.exists()
    client.post(f"{prefix}/schedules/", body, format="json")
    assert FlowRun.objects.filter(schedule_slug="gone").count() == 10


def test_admin_form_names_the_bad_field(admin_client, flow):
    page = admin_client.post("/admin/runs/schedule/add/", {
        "flow": flow.pk, "slug": "bad", "kind": "calendar", "calendar": '{"base": {"rule": "business_days"}, '
        '"holidays": {"country": "XX"}}', "timezone": "UTC", "dst_nonexistent": "shift", "dst_ambiguous": "once",
        "status": "ACTIVE", "parameters": "{}", "catchup_max_runs": 0,
    })
    assert page.status_code == 200
    form = page.context["adminform"].form
    assert "calendar" in form.errors and "'XX' is not a supported country" in form.errors["calendar"][0]
    assert not Schedule.objects.exists()


@pytest.mark.parametrize("zone", ["Europe/", "../../etc/passwd", "/etc/localtime", "Mars/Olympus_Mons"])
def test_a_time_zone_zoneinfo_refuses_in_any_way_is_400_naming_the_field(api, key_for, prefix, flow, zone):
    client = api.as_key(key_for(Role.ADMIN))
    for url, body in ((f"{prefix}/schedules/preview/", {"timezone": zone}),
                      (f"{prefix}/schedules/", {"flow": "etl", "slug": "s", "timezone": zone})):
        response = client.post(url, body, format="json")
        assert response.status_code == 400, (url, response.content)
        assert "timezone" in response.json()["error"]["fields"]


@pytest.mark.parametrize("fields, field", [
    ({"kind": "interval", "interval_seconds": 981118213324953216}, "interval_seconds"),
    ({"kind": "interval", "interval_seconds": 36_526 * 86_400}, "interval_seconds"),
    ({"kind": "interval", "interval_seconds": 3600, "anchor": "9999-12-31T20:00:00Z"}, "anchor"),
])
def test_intervals_beyond_the_calendar_are_400_naming_the_field(api, key_for, prefix, flow, fields, field):
    response = api.as_key(key_for(Role.ADMIN)).post(f"{prefix}/schedules/preview/", fields, format="json")
    assert response.status_code == 400 and field in response.json()["error"]["fields"], response.content


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati"])
def test_a_schedule_whose_times_run_past_year_9999_simply_ends(api, key_for, prefix, flow, zone):
    body = {"kind": "interval", "interval_seconds": 90 * 365 * 86_400, "timezone": zone, "count": 100}
    response = api.as_key(key_for(Role.VIEWER)).post(f"{prefix}/schedules/preview/", body, format="json")
    assert response.status_code == 200, response.content
    times = response.json()["next_runs"]
    assert 0 < len(times) < 100 and times[-1]["utc"] < "9999-12-30"
