"""Interval schedules: anchor + k × interval."""

from datetime import datetime, timedelta
from itertools import islice

from .bounds import LAST_INSTANT
from .dst import UTC, collect, local_naive

DAY = 86_400
MAX_SECONDS = 36_525 * DAY  # 100 years: longer is a typo, and past it timedelta itself overflows
# The first and last days datetime can hold are left out: a time there cannot be shown in every zone.
START, END = datetime(1, 1, 2, tzinfo=UTC), LAST_INSTANT


def validate(schedule, errors):
    seconds = schedule.interval_seconds
    if seconds is None:
        errors["interval_seconds"] = "An interval schedule needs interval_seconds."
    elif seconds <= 0:
        errors["interval_seconds"] = "The interval must be at least 1 second."
    elif seconds > MAX_SECONDS:
        errors["interval_seconds"] = f"The interval can be at most 100 years ({MAX_SECONDS:,} seconds)."
    if schedule.anchor is not None and not START <= schedule.anchor < END:
        errors["anchor"] = "The anchor must fall between 0001-01-02 and 9999-12-29."


def _anchor(schedule):
    return schedule.anchor or datetime(2020, 1, 1, tzinfo=UTC)


def next_fire_times(schedule, after, count):
    seconds = schedule.interval_seconds
    zone = schedule.timezone
    anchor = _anchor(schedule)
    if seconds > MAX_SECONDS or not START <= anchor < END:
        return []  # saved before these limits were checked: no time of it can be computed
    if seconds % DAY == 0:
        # Whole days keep their wall-clock time across DST changes: 09:00 stays 09:00.
        anchor_local = local_naive(anchor, zone)
        days = seconds // DAY
        start_k = max(0, (local_naive(after, zone) - anchor_local).days // days - 1)
        wall_times = _until_year_9999(lambda k: anchor_local + timedelta(days=days * k), start_k, 100_000)
        return collect(wall_times, zone, after, count, schedule.dst_nonexistent, schedule.dst_ambiguous)
    # Shorter intervals are exact durations: every 90 minutes is 90 minutes, DST or not.
    step = timedelta(seconds=seconds)
    k = max(0, int((after - anchor) // step))  # anchor + k × step is at or just before `after`
    times = (when for when in _until_year_9999(lambda i: anchor + i * step, k, count + 2) if when > after)
    return list(islice(times, count))


def _until_year_9999(time_at, start, steps):
    """time_at(start), time_at(start + 1), … for `steps` steps, ending early where datetime ends:
    an interval's times past year 9999 do not exist, so the schedule simply has no more."""
    for k in range(start, start + steps):
        try:
            when = time_at(k)
        except OverflowError:
            return
        if when >= (END if when.tzinfo else END.replace(tzinfo=None)):
            return
        yield when


def describe(schedule):
    seconds = schedule.interval_seconds or 0
    for unit, size in (("day", DAY), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            n = seconds // size
            return f"Every {unit}" if n == 1 else f"Every {n} {unit}s"
    return "Every second" if seconds == 1 else f"Every {seconds} seconds"

