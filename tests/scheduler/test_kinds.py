"""Interval, cron (5 and 6 fields) and RRULE schedules: their fire times and descriptions."""

import pytest
from django.core.exceptions import ValidationError

from runs.models import ScheduleKind
from tests.scheduler.conftest import local, make, utc


def test_interval_fires_on_anchor_plus_multiples_strictly_after():
    s = make(ScheduleKind.INTERVAL, interval_seconds=900, anchor=utc(2026, 1, 1, 0, 5))
    assert s.next_fire_times(utc(2026, 3, 1, 10, 5), 3) == [utc(2026, 3, 1, 10, 20), utc(2026, 3, 1, 10, 35),
                                                            utc(2026, 3, 1, 10, 50)]
    assert s.describe() == "Every 15 minutes"


def test_interval_before_anchor_starts_at_anchor():
    s = make(ScheduleKind.INTERVAL, interval_seconds=3600, anchor=utc(2030, 1, 1))
    assert s.next_fire_times(utc(2026, 1, 1), 2) == [utc(2030, 1, 1), utc(2030, 1, 1, 1)]


@pytest.mark.parametrize("seconds", [0, None])
def test_interval_of_zero_or_missing_is_rejected_naming_the_field(seconds):
    with pytest.raises(ValidationError) as err:
        make(ScheduleKind.INTERVAL, interval_seconds=seconds)
    assert "interval_seconds" in err.value.message_dict


def test_five_field_cron_with_description():
    s = make(ScheduleKind.CRON, cron="30 9 * * 1-5")
    assert local(s.next_fire_times(utc(2026, 3, 6, 12), 2), "UTC") == ["2026-03-09 09:30:00 UTC",
                                                                     "2026-03-10 09:30:00 UTC"]
    assert "09:30" in s.describe() and "Monday through Friday" in s.describe()


def test_six_field_cron_reads_seconds_first():
    s = make(ScheduleKind.CRON, cron="15 */10 * * * *")
    assert s.next_fire_times(utc(2026, 1, 1, 0, 0, 20), 3) == [utc(2026, 1, 1, 0, 10, 15), utc(2026, 1, 1, 0, 20, 15),
                                                               utc(2026, 1, 1, 0, 30, 15)]
    assert "15 seconds" in s.describe()


def test_cron_on_the_31st_skips_short_months():
    s = make(ScheduleKind.CRON, cron="0 0 31 * *")
    assert [t.month for t in s.next_fire_times(utc(2026, 1, 1), 4)] == [1, 3, 5, 7]


def test_cron_on_february_29_fires_only_in_leap_years():
    s = make(ScheduleKind.CRON, cron="0 12 29 2 *")
    assert s.next_fire_times(utc(2025, 1, 1), 2) == [utc(2028, 2, 29, 12), utc(2032, 2, 29, 12)]


@pytest.mark.parametrize("expression", ["61 * * * *", "* * *", "every day", "* * * * * * *", ""])
def test_invalid_cron_is_rejected_naming_the_field(expression):
    with pytest.raises(ValidationError) as err:
        make(ScheduleKind.CRON, cron=expression)
    assert "cron" in err.value.message_dict


def test_rrule_with_exdate_skips_the_excluded_day():
    text = "DTSTART:20260105T090000\nRRULE:FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR\nEXDATE:20260107T090000"
    s = make(ScheduleKind.RRULE, rrule=text, tz="Europe/London")
    assert local(s.next_fire_times(utc(2026, 1, 5), 4), "Europe/London") == [
        "2026-01-05 09:00:00 GMT", "2026-01-06 09:00:00 GMT", "2026-01-08 09:00:00 GMT", "2026-01-09 09:00:00 GMT"]
    assert s.describe().startswith("FREQ=DAILY")


def test_rrule_last_day_of_month_handles_short_months_and_leap_years():
    s = make(ScheduleKind.RRULE, rrule="DTSTART:20231201T000000\nRRULE:FREQ=MONTHLY;BYMONTHDAY=-1")
    assert [t.date().isoformat() for t in s.next_fire_times(utc(2024, 1, 1), 3)] == [
        "2024-01-31", "2024-02-29", "2024-03-31"]


@pytest.mark.parametrize("text", ["RRULE:FREQ=SOMETIMES", "not a rule", "", "RRULE:FREQ=DAILY;BYHOUR=25"])
def test_invalid_rrule_is_rejected_naming_the_field(text):
    with pytest.raises(ValidationError) as err:
        make(ScheduleKind.RRULE, rrule=text)
    assert "rrule" in err.value.message_dict



@pytest.mark.parametrize("text", [
    "DTSTART:20200101T000700\nRRULE:FREQ=MINUTELY;INTERVAL=7",
    "DTSTART:20200103T093000\nRRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=FR,MO",
    "DTSTART:20200101T000000\nRRULE:FREQ=HOURLY;INTERVAL=5;BYMINUTE=15,45\nEXDATE:20260301T101500",
    "DTSTART:20200101T000000\nRRULE:FREQ=DAILY;BYSETPOS=1;BYHOUR=3,9",
])
def test_rrule_started_long_ago_gives_the_same_times_as_walking_from_its_start(text):
    from dateutil.rrule import rrulestr

    s = make(ScheduleKind.RRULE, rrule=text)
    after = utc(2026, 3, 1, 8, 3)
    walked = rrulestr(text, forceset=True).xafter(after.replace(tzinfo=None), count=12)
    assert s.next_fire_times(after, 12) == [t.replace(tzinfo=after.tzinfo) for t in walked]


def test_catch_up_above_the_cap_is_rejected_naming_the_field():
    with pytest.raises(ValidationError) as err:
        make(ScheduleKind.INTERVAL, interval_seconds=60, catchup_max_runs=5000)
    assert "catchup_max_runs" in err.value.message_dict
