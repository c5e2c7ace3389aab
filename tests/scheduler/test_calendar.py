"""Calendar rules: business days, holidays, month and quarter ends, nth weekdays, windows, adjustments."""

import pytest
from django.core.exceptions import ValidationError

from runs.models import ScheduleKind
from tests.scheduler.conftest import local, make, utc

NY = "America/New_York"


def days(schedule, after, count):
    return [t[:10] for t in local(schedule.next_fire_times(after, count), str(schedule.timezone))]


def calendar(tz="UTC", **spec):
    return make(ScheduleKind.CALENDAR, tz=tz, calendar=spec)


def test_business_days_are_monday_to_friday():
    s = calendar(base={"rule": "business_days"}, times=["09:00"])
    assert days(s, utc(2026, 3, 5, 12), 4) == ["2026-03-06", "2026-03-09", "2026-03-10", "2026-03-11"]


def test_business_days_skip_a_holiday_falling_on_a_friday():
    # Good Friday 2026-04-03 is a public holiday in England.
    s = calendar("Europe/London", base={"rule": "business_days"}, holidays={"country": "GB", "subdivision": "ENG"},
                 times=["09:00"])
    assert days(s, utc(2026, 4, 1, 12), 3) == ["2026-04-02", "2026-04-07", "2026-04-08"]  # Easter Monday too


def test_independence_day_observed_on_friday_is_not_a_business_day_in_the_us():
    # 2026-07-04 is a Saturday; the holiday is observed on Friday 2026-07-03.
    s = calendar(NY, base={"rule": "business_days"}, holidays={"country": "US"}, times=["09:00"])
    assert days(s, utc(2026, 7, 2, 15), 2) == ["2026-07-06", "2026-07-07"]


def test_last_business_day_of_month_in_short_months_and_leap_years():
    s = calendar(base={"rule": "last_business_day_of_month"}, times=["17:00"])
    # Feb 2024 ends on Thursday the 29th (leap day); Feb 2025 on Friday the 28th; Aug 2026 on a Monday the 31st.
    assert days(s, utc(2024, 2, 1), 2) == ["2024-02-29", "2024-03-29"]
    assert days(s, utc(2025, 2, 1), 1) == ["2025-02-28"]
    assert days(s, utc(2026, 8, 1), 1) == ["2026-08-31"]


def test_last_business_day_of_quarter_skips_a_holiday():
    # 2026-12-31 is a Thursday: last business day of Q4. 2027-03-31 is a Wednesday.
    s = calendar(base={"rule": "last_business_day_of_quarter"}, times=["18:00"])
    assert days(s, utc(2026, 10, 1), 3) == ["2026-12-31", "2027-03-31", "2027-06-30"]
    # Q1 2024 ends on Sunday 2024-03-31; Friday 2024-03-29 is Good Friday in England.
    uk = calendar(base={"rule": "last_business_day_of_quarter"}, holidays={"country": "GB", "subdivision": "ENG"})
    assert days(uk, utc(2024, 1, 1), 1) == ["2024-03-28"]


def test_first_business_day_after_quarter_end():
    s = calendar(base={"rule": "first_business_day_after_quarter_end"}, holidays={"country": "US"}, times=["06:00"])
    # 2027-01-01 is a holiday (Friday), so the first business day is Monday 2027-01-04.
    assert days(s, utc(2026, 6, 1), 3) == ["2026-07-01", "2026-10-01", "2027-01-04"]


def test_nth_weekday_of_month_and_the_last_one():
    second_tuesday = calendar(base={"rule": "nth_weekday", "nth": 2, "weekday": "TU"}, times=["10:00"])
    assert days(second_tuesday, utc(2026, 1, 1), 3) == ["2026-01-13", "2026-02-10", "2026-03-10"]
    last_friday = calendar(base={"rule": "nth_weekday", "nth": -1, "weekday": "FR"}, times=["10:00"])
    assert days(last_friday, utc(2026, 1, 1), 3) == ["2026-01-30", "2026-02-27", "2026-03-27"]
    assert second_tuesday.describe() == "Second Tuesday of the month, at 10:00"


def test_fifth_weekday_fires_only_in_months_that_have_one():
    s = calendar(base={"rule": "nth_weekday", "nth": 5, "weekday": "MO"})
    assert days(s, utc(2026, 1, 1), 3) == ["2026-03-30", "2026-06-29", "2026-08-31"]


def test_time_window_with_a_step_includes_both_ends():
    s = calendar(NY, base={"rule": "business_days"}, window={"start": "09:00", "end": "17:00", "every_minutes": 120})
    times = local(s.next_fire_times(utc(2026, 3, 2, 5), 6), NY)
    assert [t[11:16] for t in times] == ["09:00", "11:00", "13:00", "15:00", "17:00", "09:00"]
    assert "between 09:00 and 17:00" in s.describe()


def test_adjustment_moves_a_weekend_date_to_the_next_business_day():
    # The 15th: Sunday 2026-02-15 → Monday 16th; 2026-03-15 is a Sunday too → Monday 16th.
    s = calendar(base={"rule": "day_of_month", "day": 15}, adjustment="next_business_day", times=["09:00"])
    assert days(s, utc(2026, 1, 1), 3) == ["2026-01-15", "2026-02-16", "2026-03-16"]


def test_adjustment_to_previous_business_day_keeps_order_across_month_boundaries():
    # The 1st, moved back: 2026-03-01 is a Sunday → Friday 2026-02-27; 2026-02-01 a Sunday → 2026-01-30.
    s = calendar(base={"rule": "day_of_month", "day": 1}, adjustment="previous_business_day", times=["09:00"])
    assert days(s, utc(2026, 1, 2), 3) == ["2026-01-30", "2026-02-27", "2026-04-01"]


def test_filters_compose_with_a_base_rule():
    s = calendar(base={"rule": "every_day"}, filters=[{"type": "months", "months": [12]}, {"type": "business_days"},
                                                      {"type": "exclude_dates", "dates": ["2026-12-02"]}])
    assert days(s, utc(2026, 11, 30), 3) == ["2026-12-01", "2026-12-03", "2026-12-04"]


def test_last_day_of_month_handles_february():
    s = calendar(base={"rule": "day_of_month", "day": -1})
    assert days(s, utc(2027, 1, 15), 3) == ["2027-01-31", "2027-02-28", "2027-03-31"]


def test_description_names_rule_adjustment_and_holidays():
    s = calendar(base={"rule": "last_business_day_of_month"}, holidays={"country": "US", "subdivision": "NY"},
                 times=["17:00"])
    assert s.describe() == "Last business day of the month, at 17:00 (holidays: US-NY)"


@pytest.mark.parametrize("spec, words", [
    ({}, "needs a rule"),
    ({"base": {"rule": "fortnightly"}}, "base.rule"),
    ({"base": {"rule": "business_days"}, "holidays": {"country": "XX"}}, "'XX' is not a supported country"),
    ({"base": {"rule": "business_days"}, "holidays": {"country": "US", "subdivision": "ZZ"}}, "subdivision"),
    ({"base": {"rule": "nth_weekday", "nth": 6, "weekday": "MO"}}, "base.nth"),
    ({"base": {"rule": "nth_weekday", "nth": 1, "weekday": "Monday"}}, "base.weekday"),
    ({"base": {"rule": "every_day"}, "times": ["25:00"]}, "HH:MM"),
    ({"base": {"rule": "every_day"}, "window": {"start": "09:00", "end": "17:00", "every_minutes": 0}}, "every_minutes"),
    ({"base": {"rule": "every_day"}, "adjustment": "sideways"}, "adjustment"),
    ({"base": {"rule": "day_of_month", "day": 30}, "filters": [{"type": "months", "months": [2]}]}, "never fires"),
])
def test_bad_calendar_is_rejected_naming_the_field_and_the_mistake(spec, words):
    with pytest.raises(ValidationError) as err:
        calendar(**spec)
    assert words in err.value.message_dict["calendar"][0]
