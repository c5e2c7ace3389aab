"""RFC 5545 recurrence rules (RRULE, RDATE, EXDATE), evaluated in the schedule's zone."""

from datetime import datetime, timedelta

from dateutil.rrule import DAILY, HOURLY, MINUTELY, SECONDLY, WEEKLY, rrulestr

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


# Whole periods of the frequencies whose rules can start later without changing what they mean.
PERIODS = {WEEKLY: timedelta(weeks=1), DAILY: timedelta(days=1), HOURLY: timedelta(hours=1),
           MINUTELY: timedelta(minutes=1), SECONDLY: timedelta(seconds=1)}


def fast_forward(rule_set, before):
    """Move each rule's start to the last whole number of its periods before `before`.

    dateutil walks every occurrence from DTSTART, so a minutely rule started years ago would
    cost millions of steps per call. Moving DTSTART by whole multiples of INTERVAL × period keeps
    every occurrence from `before` on (the BY* defaults taken from DTSTART — weekday, hour, minute,
    second — do not change). Rules with COUNT count from the real start and are left alone;
    monthly and yearly rules are cheap to walk and are left alone too.
    """
    rules = []
    for rule in rule_set._rrule:  # dateutil offers no public way to rebuild a set's rules
        period = PERIODS.get(rule._freq)
        if period is None or rule._count or rule._dtstart >= before:
            rules.append(rule)
            continue
        step = period * rule._interval
        rules.append(rule.replace(dtstart=rule._dtstart + step * ((before - rule._dtstart) // step)))
    rule_set._rrule = rules
    return rule_set


def next_fire_times(schedule, after, count):
    zone = schedule.timezone
    start = start_of_search(after, zone)
    rule_set = fast_forward(parse(schedule), start)
    wall_times = rule_set.xafter(start, count=count * 4 + 10)
    return collect(wall_times, zone, after, count, schedule.dst_nonexistent, schedule.dst_ambiguous)


def describe(schedule):
    lines = [line for line in schedule.rrule.strip().splitlines() if line.upper().startswith("RRULE")]
    return (lines[0] if lines else schedule.rrule.strip()).removeprefix("RRULE:")
