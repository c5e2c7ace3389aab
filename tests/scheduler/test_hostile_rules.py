"""Rules that never fire, fire once in decades, or cost minutes to evaluate: refused with a 400 naming
the field, quickly, on create, edit, preview and in the admin; never a hung thread or a 500.

Every call that hung before is guarded by `returns_within`, so a regression fails instead of hanging.
The budget is 1 s (`budget` fixture); "quickly" is a generous 5 s.
"""

import zoneinfo

import pytest
from django.utils import timezone

from runs.models import FlowRun, Role, Schedule, ScheduleKind
from tests import factories
from tests.scheduler.conftest import make, returns_within, utc

pytestmark = pytest.mark.usefixtures("budget")

QUICKLY = 5  # seconds; the budget is 1 s


@pytest.fixture
def flow(ws):
    return factories.flow(ws, name="etl")


# Each never fires: no fire time at all, or none in the next 100 years.
NEVER_FIRING = [
    pytest.param({"kind": "cron", "cron": "0 0 31 2 *"}, "cron", id="cron-february-31"),
    pytest.param({"kind": "cron", "cron": "0 0 0 30 2 *"}, "cron", id="cron-6-fields-february-30"),
    pytest.param({"kind": "rrule", "rrule": "RRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"}, "rrule",
                 id="rrule-yearly-february-30"),
    pytest.param({"kind": "rrule", "rrule": "RRULE:FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30"}, "rrule",
                 id="rrule-secondly-february-30"),
    pytest.param({"kind": "rrule", "rrule": "DTSTART:20000101T000000\nRRULE:FREQ=DAILY;UNTIL=20100101T000000"}, "rrule",
                 id="rrule-ended-long-ago"),
    pytest.param({"kind": "rrule", "rrule": "DTSTART:99991231T230000\nRRULE:FREQ=DAILY",
                  "timezone": "America/New_York"}, "rrule", id="rrule-only-in-year-9999-west-of-utc"),
    pytest.param({"kind": "rrule", "rrule": "RRULE:FREQ=MINUTELY;INTERVAL=1000000000"}, "rrule",
                 id="rrule-every-1900-years"),
    pytest.param({"kind": "calendar", "calendar": {"base": {"rule": "every_day"},
                                                   "filters": [{"type": "weekdays", "weekdays": ["SA"]},
                                                               {"type": "business_days"}]}}, "calendar",
                 id="calendar-filters-exclude-every-date"),
    pytest.param({"kind": "calendar", "calendar": {"base": {"rule": "day_of_month", "day": 31},
                                                   "filters": [{"type": "months", "months": [2, 4, 6, 9, 11]}]}},
                 "calendar", id="calendar-31st-of-short-months"),
    pytest.param({"kind": "interval", "interval_seconds": 3600, "anchor": "2300-01-01T00:00:00Z"}, "anchor",
                 id="interval-anchored-in-2300"),
]

# Each takes far more than the budget to evaluate: refused as too expensive, not computed for minutes.
# (A rule that never fires may be among them: dateutil cannot tell until it has walked 100 years of
# candidates, e.g. FREQ=WEEKLY;BYDAY=MO;BYSETPOS=2: its 5,200 weeks take ~2.8 s of CPU. Not the sixth
# Monday of a month: its 1,200 months take ~1.07 s, at the budget's edge, and a fast moment answered
# "never fires" instead, 2026-12-07.)
TOO_EXPENSIVE = [
    pytest.param("RRULE:FREQ=WEEKLY;BYDAY=MO;BYSETPOS=2", id="second-monday-of-a-week"),
    pytest.param("RRULE:FREQ=SECONDLY;BYSETPOS=2", id="secondly-second-of-one"),
    pytest.param("DTSTART:00010101T000000\nRRULE:FREQ=SECONDLY;COUNT=100000000000", id="count-walked-from-year-1"),
    pytest.param("RRULE:FREQ=SECONDLY;COUNT=2000000000", id="huge-count"),
]


def created(client, prefix, fields, slug="s"):
    with returns_within(QUICKLY):
        return client.post(f"{prefix}/schedules/", {"flow": "etl", "slug": slug, **fields}, format="json")


def previewed(client, prefix, fields):
    with returns_within(QUICKLY):
        return client.post(f"{prefix}/schedules/preview/", fields, format="json")


@pytest.mark.parametrize("fields, field", NEVER_FIRING)
def test_a_rule_that_never_fires_is_a_400_naming_the_field_and_nothing_is_saved(api, key_for, prefix, flow,
                                                                               fields, field):
    client = api.as_key(key_for(Role.ADMIN))
    response = created(client, prefix, fields)
    assert response.status_code == 400, response.content
    message = response.json()["error"]["fields"][field][0]
    assert "never fires" in message and "100 years" in message
    assert not Schedule.objects.exists() and not FlowRun.objects.exists()
    response = previewed(client, prefix, fields)
    assert response.status_code == 400 and field in response.json()["error"]["fields"], response.content


@pytest.mark.parametrize("text", TOO_EXPENSIVE)
def test_a_rule_too_expensive_to_evaluate_is_a_400_within_the_budget(api, key_for, prefix, flow, text):
    viewer, admin = key_for(Role.VIEWER), key_for(Role.ADMIN)
    for response in (previewed(api.as_key(viewer), prefix, {"kind": "rrule", "rrule": text}),
                     created(api.as_key(admin), prefix, {"kind": "rrule", "rrule": text})):
        assert response.status_code == 400, response.content
        message = response.json()["error"]["fields"]["rrule"][0]
        assert message.startswith("Too expensive to evaluate:") and "1 s" in message
    assert not Schedule.objects.exists() and not FlowRun.objects.exists()


def test_the_preview_that_hung_a_server_thread_answers_at_once(api, key_for, prefix):
    """The rule of the issue: DTSTART in year 1, every second. Without COUNT, the times from now on are
    those of the same rule started today, so it is evaluated from now instead of walked from year 1."""
    body = {"kind": "rrule", "rrule": "DTSTART:00010101T000000\nRRULE:FREQ=SECONDLY", "count": 100}
    before = timezone.now()
    response = previewed(api.as_key(key_for(Role.VIEWER)), prefix, body)
    assert response.status_code == 200, response.content
    times = [r["utc"] for r in response.json()["next_runs"]]
    assert len(times) == 100 and times[0] > before.isoformat()[:19]
    assert len({t[:19] for t in times}) == 100  # one per second


def test_an_edit_to_a_rule_that_never_fires_is_refused_and_the_schedule_keeps_its_rule(api, key_for, prefix, flow):
    client = api.as_key(key_for(Role.ADMIN))
    schedule_id = created(client, prefix, {"kind": "cron", "cron": "0 * * * *"}).json()["id"]
    with returns_within(QUICKLY):
        response = client.patch(f"{prefix}/schedules/{schedule_id}/", {"cron": "0 0 31 2 *"}, format="json")
    assert response.status_code == 400 and "cron" in response.json()["error"]["fields"], response.content
    assert Schedule.objects.get(pk=schedule_id).cron == "0 * * * *"
    assert FlowRun.objects.filter(schedule_id=schedule_id).count() == 10


@pytest.mark.parametrize("fields, field, words", [
    pytest.param({"kind": "rrule", "rrule": "RRULE:FREQ=MINUTELY\nEXDATE:" + ",".join(
        f"2027{m:02d}{d:02d}T{h:02d}{minute:02d}00" for m in range(1, 13) for d in range(1, 29) for h in range(24)
        for minute in range(0, 60, 4))[:100_000 * 16 - 1]},
        "rrule", "at most 20,000 characters", id="rrule-with-100000-exdates"),
    pytest.param({"kind": "rrule", "rrule": "RRULE:FREQ=DAILY;" + "BYHOUR=1;" * 100_000}, "rrule",
                 "at most 20,000 characters", id="giant-rrule-text"),
    pytest.param({"kind": "calendar", "calendar": {"base": {"rule": "every_day"}, "filters": [
        {"type": "exclude_dates", "dates": [f"{2027 + i // 336}-{i // 28 % 12 + 1:02d}-{i % 28 + 1:02d}"
                                            for i in range(100_000)]}]}},
        "calendar", "at most 20,000 characters", id="calendar-with-100000-excluded-dates"),
])
def test_oversized_rules_are_a_400_naming_the_field(api, key_for, prefix, flow, fields, field, words):
    client = api.as_key(key_for(Role.ADMIN))
    for response in (previewed(client, prefix, fields), created(client, prefix, fields)):
        assert response.status_code == 400, response.content[:300]
        assert words in response.json()["error"]["fields"][field][0]
    assert not Schedule.objects.exists()


@pytest.mark.parametrize("fields", [
    pytest.param({"kind": "rrule", "rrule": "RRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO"},
                 id="rrule-every-29-february-that-is-a-monday"),
    pytest.param({"kind": "cron", "cron": "0 0 29 2 1#5"}, id="cron-fifth-monday-of-february"),
    pytest.param({"kind": "calendar", "calendar": {"base": {"rule": "day_of_month", "day": 29},
                                                   "filters": [{"type": "months", "months": [2]},
                                                               {"type": "weekdays", "weekdays": ["MO"]}]}},
                 id="calendar-29-february-on-a-monday"),
])
def test_a_rule_that_fires_once_in_decades_is_accepted_with_its_runs(api, key_for, prefix, flow, fields):
    response = created(api.as_key(key_for(Role.ADMIN)), prefix, fields)
    assert response.status_code == 201, response.content
    starts = sorted(FlowRun.objects.filter(schedule_id=response.json()["id"]).values_list("scheduled_start", flat=True))
    assert len(starts) == 10 and starts[0].year == 2044  # 29 Feb 2044 is a Monday; then every 28 or 40 years
    assert all((s.month, s.day, s.weekday()) == (2, 29, 0) for s in starts)


def test_admin_form_refuses_a_rule_that_never_fires_naming_the_field(admin_client, flow):
    with returns_within(QUICKLY):
        page = admin_client.post("/admin/runs/schedule/add/", {
            "flow": flow.pk, "slug": "feb31", "kind": "cron", "cron": "0 0 31 2 *", "calendar": "{}",
            "timezone": "UTC", "dst_nonexistent": "shift", "dst_ambiguous": "once", "status": "ACTIVE",
            "parameters": "{}", "catchup_max_runs": 0,
        })
    assert page.status_code == 200
    errors = page.context["adminform"].form.errors
    assert "cron" in errors and "never fires" in errors["cron"][0]
    assert not Schedule.objects.exists() and not FlowRun.objects.exists()


def test_admin_form_refuses_a_rule_too_expensive_to_evaluate(admin_client, flow):
    with returns_within(QUICKLY):
        page = admin_client.post("/admin/runs/schedule/add/", {
            "flow": flow.pk, "slug": "setpos", "kind": "rrule", "rrule": "RRULE:FREQ=SECONDLY;BYSETPOS=2",
            "calendar": "{}", "timezone": "UTC", "dst_nonexistent": "shift", "dst_ambiguous": "once",
            "status": "ACTIVE", "parameters": "{}", "catchup_max_runs": 0,
        })
    errors = page.context["adminform"].form.errors
    assert "rrule" in errors and errors["rrule"][0].startswith("Too expensive to evaluate:")
    assert not Schedule.objects.exists()


# --- the kinds themselves -------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "DTSTART:00010101T093000\nRRULE:FREQ=YEARLY;BYMONTH=3,9;BYDAY=-1FR",
    "DTSTART:16000229T120000\nRRULE:FREQ=YEARLY",
    "DTSTART:00010131T000000\nRRULE:FREQ=MONTHLY;INTERVAL=5;BYMONTHDAY=-1",
    "DTSTART:17530101T080000\nRRULE:FREQ=MONTHLY;BYDAY=2TU;BYSETPOS=1",
])
def test_rules_started_centuries_ago_give_the_times_of_walking_from_their_start_quickly(text):
    from dateutil.rrule import rrulestr

    after = utc(2026, 3, 1, 8, 3)
    with returns_within(QUICKLY):
        s = make(ScheduleKind.RRULE, rrule=text)
        times = s.next_fire_times(after, 12)
    with returns_within(60):
        walked = list(rrulestr(text, forceset=True).xafter(after.replace(tzinfo=None), count=12))
    assert times == [t.replace(tzinfo=after.tzinfo) for t in walked]


@pytest.mark.parametrize("kind, fields", [
    (ScheduleKind.RRULE, {"rrule": "RRULE:FREQ=MINUTELY;INTERVAL=5"}),
    (ScheduleKind.RRULE, {"rrule": "RRULE:FREQ=SECONDLY"}),
    (ScheduleKind.CRON, {"cron": "* * * * * *"}),
])
def test_frequent_rules_in_a_zone_with_summer_time_have_their_next_runs(kind, fields):
    s = make(kind, tz="Europe/Berlin", **fields)
    after = utc(2026, 5, 4, 12, 0, 7)
    with returns_within(QUICKLY):
        times = s.next_fire_times(after, 10)
    assert len(times) == 10 and times[0] > after and times == sorted(set(times))


def test_no_fire_time_is_past_the_end_of_the_calendar_in_any_zone():
    """Times past 9999-12-30 UTC cannot be shown in every zone, so they do not exist, as for intervals."""
    s = Schedule(kind=ScheduleKind.RRULE, timezone=zoneinfo.ZoneInfo("Pacific/Kiritimati"),
                 rrule="DTSTART:99991201T000000\nRRULE:FREQ=DAILY")  # saved before validation refused it
    times = s.next_fire_times(utc(9999, 11, 30), 100)
    assert 0 < len(times) < 100 and times[-1] < utc(9999, 12, 30)
