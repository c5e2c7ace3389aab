"""Interval schedules: anchor + k × interval."""

from datetime import datetime, timedelta

from .dst import UTC, collect, local_naive

DAY = 86_400


def validate(schedule, errors):
    seconds = schedule.interval_seconds
    if seconds is None:
        errors["interval_seconds"] = "An interval schedule needs interval_seconds."
    elif seconds <= 0:
        errors["interval_seconds"] = "The interval must be at least 1 second."


def _anchor(schedule):
    return schedule.anchor or datetime(2020, 1, 1, tzinfo=UTC)


def next_fire_times(schedule, after, count):
    seconds = schedule.interval_seconds
    zone = schedule.timezone
    anchor = _anchor(schedule)
    if seconds % DAY == 0:
        # Whole days keep their wall-clock time across DST changes: 09:00 stays 09:00.
        anchor_local = local_naive(anchor, zone)
        days = seconds // DAY
        start_k = max(0, (local_naive(after, zone) - anchor_local).days // days - 1)
        wall_times = (anchor_local + timedelta(days=days * k) for k in range(start_k, start_k + 100_000))
        return collect(wall_times, zone, after, count, schedule.dst_nonexistent, schedule.dst_ambiguous)
    # Shorter intervals are exact durations: every 90 minutes is 90 minutes, DST or not.
    step = timedelta(seconds=seconds)
    k = max(0, int((after - anchor) // step) + 1)
    first = anchor + k * step
    if first <= after:
        first += step
    return [first + i * step for i in range(count)]


def describe(schedule):
    seconds = schedule.interval_seconds or 0
    for unit, size in (("day", DAY), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            n = seconds // size
            return f"Every {unit}" if n == 1 else f"Every {n} {unit}s"
    return "Every second" if seconds == 1 else f"Every {seconds} seconds"

