"""DST: spring-forward gaps (shift or skip) and fall-back overlaps (once or twice), New York and London."""

import pytest

from runs.models import AmbiguousTimePolicy as Overlap, NonexistentTimePolicy as Gap, ScheduleKind
from tests.scheduler.conftest import local, make, utc

NY, LONDON = "America/New_York", "Europe/London"


# 2026-03-08 02:00 → 03:00 in New York; 2026-03-29 01:00 → 02:00 in London.
@pytest.mark.parametrize("tz, cron, after, gap_day", [
    (NY, "30 2 * * *", utc(2026, 3, 6, 12), "2026-03-08"),
    (LONDON, "30 1 * * *", utc(2026, 3, 27, 12), "2026-03-29"),
])
def test_spring_forward_shift_runs_at_the_end_of_the_gap(tz, cron, after, gap_day):
    s = make(ScheduleKind.CRON, tz=tz, cron=cron, dst_nonexistent=Gap.SHIFT)
    times = local(s.next_fire_times(after, 3), tz)
    hour = "03" if tz == NY else "02"
    assert times[1].startswith(f"{gap_day} {hour}:00:00")
    assert len(set(t[:10] for t in times)) == 3  # one run per day, the gap day included


@pytest.mark.parametrize("tz, cron, after, gap_day", [
    (NY, "30 2 * * *", utc(2026, 3, 6, 12), "2026-03-08"),
    (LONDON, "30 1 * * *", utc(2026, 3, 27, 12), "2026-03-29"),
])
def test_spring_forward_skip_drops_the_missing_time(tz, cron, after, gap_day):
    s = make(ScheduleKind.CRON, tz=tz, cron=cron, dst_nonexistent=Gap.SKIP)
    days = [t[:10] for t in local(s.next_fire_times(after, 3), tz)]
    assert gap_day not in days and len(days) == 3


# 2026-11-01 02:00 → 01:00 in New York; 2026-10-25 02:00 → 01:00 in London.
@pytest.mark.parametrize("tz, after, fold_day", [(NY, utc(2026, 10, 31, 12), "2026-11-01"),
                                                 (LONDON, utc(2026, 10, 24, 12), "2026-10-25")])
def test_fall_back_once_runs_at_the_first_occurrence(tz, after, fold_day):
    s = make(ScheduleKind.CRON, tz=tz, cron="30 1 * * *", dst_ambiguous=Overlap.ONCE)
    times = local(s.next_fire_times(after, 2), tz)
    assert times[0] == f"{fold_day} 01:30:00 " + ("EDT" if tz == NY else "BST")
    assert times[1][:10] != fold_day


@pytest.mark.parametrize("tz, after, fold_day", [(NY, utc(2026, 10, 31, 12), "2026-11-01"),
                                                 (LONDON, utc(2026, 10, 24, 12), "2026-10-25")])
def test_fall_back_twice_runs_at_both_occurrences_an_hour_apart(tz, after, fold_day):
    s = make(ScheduleKind.CRON, tz=tz, cron="30 1 * * *", dst_ambiguous=Overlap.TWICE)
    first, second, third = s.next_fire_times(after, 3)
    summer, winter = ("EDT", "EST") if tz == NY else ("BST", "GMT")
    assert local([first, second], tz) == [f"{fold_day} 01:30:00 {summer}", f"{fold_day} 01:30:00 {winter}"]
    assert (second - first).total_seconds() == 3600
    assert third.astimezone(first.tzinfo) > second


def test_default_policies_are_shift_and_once():
    from runs.models import Schedule

    s = Schedule()
    assert (s.dst_nonexistent, s.dst_ambiguous) == (Gap.SHIFT, Overlap.ONCE)


@pytest.mark.parametrize("tz", [NY, LONDON])
def test_whole_day_interval_keeps_its_wall_clock_time_across_both_changes(tz):
    s = make(ScheduleKind.INTERVAL, tz=tz, interval_seconds=86_400, anchor=utc(2026, 1, 5, 14))
    times = local(s.next_fire_times(utc(2026, 1, 1), 366), tz)
    wall = {t[11:19] for t in times}
    assert wall == {"09:00:00"} if tz == NY else wall == {"14:00:00"}


def test_hourly_interval_is_an_exact_duration_across_a_change():
    s = make(ScheduleKind.INTERVAL, tz=NY, interval_seconds=3600, anchor=utc(2026, 1, 1))
    times = s.next_fire_times(utc(2026, 3, 8, 5), 4)
    assert {(b - a).total_seconds() for a, b in zip(times, times[1:])} == {3600}
    assert local(times, NY)[:3] == ["2026-03-08 01:00:00 EST", "2026-03-08 03:00:00 EDT", "2026-03-08 04:00:00 EDT"]


def test_rrule_in_london_skips_the_gap_when_asked():
    s = make(ScheduleKind.RRULE, tz=LONDON, rrule="DTSTART:20260327T013000\nRRULE:FREQ=DAILY",
             dst_nonexistent=Gap.SKIP)
    assert [t[:10] for t in local(s.next_fire_times(utc(2026, 3, 27), 3), LONDON)] == [
        "2026-03-27", "2026-03-28", "2026-03-30"]


def test_calendar_business_days_in_new_york_shift_through_the_gap():
    s = make(ScheduleKind.CALENDAR, tz=NY, calendar={"base": {"rule": "every_day"}, "times": ["02:30"]})
    assert local(s.next_fire_times(utc(2026, 3, 7, 12), 2), NY) == ["2026-03-08 03:00:00 EDT",
                                                                    "2026-03-09 02:30:00 EDT"]
