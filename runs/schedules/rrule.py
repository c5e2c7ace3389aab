"""RFC 5545 recurrence rules (RRULE, RDATE, EXDATE), evaluated in the schedule's zone."""

from datetime import datetime

from dateutil.rrule import rrulestr

from .dst import collect, local_naive, start_of_search


def _default_start(schedule):
    if schedule.anchor:
        return local_naive(schedule.anchor, schedule.timezone)
    return datetime(2020, 1, 1)


def parse(schedule):
    """The rule set of `schedule.rrule`, in naive local wall time."""
    return rrulestr(schedule.rrule.strip(), forceset=True, dtstart=_default_start(schedule), ignoretz=True)


def validate(schedule, errors):
    text = (schedule.rrule or "").strip()
    if not text:
        errors["rrule"] = "An rrule schedule needs a rule, e.g. 'RRULE:FREQ=WEEKLY;BYDAY=MO;BYHOUR=9'."
        return
    try:
        rule_set = parse(schedule)
        rule_set.after(datetime(2000, 1, 1))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        errors["rrule"] = f"Not a valid RFC 5545 recurrence rule: {exc}."


def next_fire_times(schedule, after, count):
    zone = schedule.timezone
    rule_set = parse(schedule)
    wall_times = rule_set.xafter(start_of_search(after, zone), count=count * 4 + 10)
    return collect(wall_times, zone, after, count, schedule.dst_nonexistent, schedule.dst_ambiguous)


def describe(schedule):
    lines = [line for line in schedule.rrule.strip().splitlines() if line.upper().startswith("RRULE")]
    return (lines[0] if lines else schedule.rrule.strip()).removeprefix("RRULE:")
