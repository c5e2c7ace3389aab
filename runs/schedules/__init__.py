"""The kinds of schedule. Each kind module offers validate, next_fire_times and describe."""

import zoneinfo

from django.core.exceptions import ValidationError

from runs.models import ScheduleKind

from . import calendar, cron, interval, rrule

KINDS = {
    ScheduleKind.INTERVAL: interval,
    ScheduleKind.CRON: cron,
    ScheduleKind.RRULE: rrule,
    ScheduleKind.CALENDAR: calendar,
}
# Catch-up after downtime creates at most this many past runs per schedule, whatever is asked.
MAX_CATCHUP_RUNS = 1000


def _kind_module(schedule):
    module = KINDS.get(schedule.kind)
    if module is None:
        raise ValidationError({"kind": f"Unknown schedule kind {schedule.kind!r}."})
    return module


def validate_schedule(schedule):
    """Raise ValidationError naming each bad field of `schedule` and what is wrong with it."""
    errors = {}
    zone = schedule.timezone
    if isinstance(zone, str):
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errors["timezone"] = f"{zone!r} is not an IANA time zone such as 'Europe/London'."
    elif zone is None:
        errors["timezone"] = "A schedule needs a time zone."
    if (schedule.catchup_max_runs or 0) > MAX_CATCHUP_RUNS:
        errors["catchup_max_runs"] = f"Catch-up is capped at {MAX_CATCHUP_RUNS} runs."
    if schedule.kind not in KINDS:
        errors["kind"] = f"Unknown schedule kind {schedule.kind!r}; use one of {', '.join(KINDS)}."
    elif not errors:
        KINDS[schedule.kind].validate(schedule, errors)
    if errors:
        raise ValidationError(errors)


def next_fire_times(schedule, after, count):
    """The next `count` fire times strictly after `after`, aware, in UTC, ascending."""
    if count <= 0:
        return []
    return _kind_module(schedule).next_fire_times(schedule, after, count)


def describe(schedule):
    """A short human description of when `schedule` fires."""
    try:
        text = _kind_module(schedule).describe(schedule)
    except ValidationError:
        return ""
    zone = str(schedule.timezone)
    return text if zone == "UTC" else f"{text} ({zone})"
