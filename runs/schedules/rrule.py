"""RFC 5545 recurrence rules (RRULE, RDATE, EXDATE, EXRULE), evaluated in the schedule's zone.

dateutil walks every candidate period from DTSTART and yields only the ones that match; when
nothing matches it walks on, up to year 9999, inside one `next()`. So the rules are evaluated
in windows: each starts near the search's start (DTSTART moved forward by whole cycles of the
rule, see `started_near`) and ends MAX_GAP after the last fire time found (UNTIL), and a window
that holds nothing ends the schedule. What is left to walk inside a window is bounded by the
time budget (bounds.py).
"""

from datetime import datetime, timedelta
from math import lcm

from dateutil.rrule import DAILY, HOURLY, MINUTELY, MONTHLY, SECONDLY, WEEKLY, YEARLY, rruleset, rrulestr

from .bounds import MAX_GAP
from .dst import collect, local_naive, start_of_search

# The longest rule accepted. Parsing costs about 40 µs per EXDATE or RDATE value, so 20,000
# characters (some 1,200 dates) parse in about 50 ms; a few years of excluded days fit.
MAX_RULE_CHARS = 20_000
LAST_WALL_TIME = datetime.max - timedelta(days=2)  # leaves room for any zone's offset


def _default_start(schedule):
    if schedule.anchor:
        return local_naive(schedule.anchor, schedule.timezone)
    return datetime(2020, 1, 1)


def parse(schedule):
    """The rule set of `schedule.rrule`, in naive local wall time."""
    return rrulestr(schedule.rrule.strip(), forceset=True, dtstart=_default_start(schedule), ignoretz=True)


def validate(schedule, errors):
    """Name what is wrong with the text of `schedule.rrule` (whether it fires is checked by the caller)."""
    text = (schedule.rrule or "").strip()
    if not text:
        errors["rrule"] = "An rrule schedule needs a rule, e.g. 'RRULE:FREQ=WEEKLY;BYDAY=MO;BYHOUR=9'."
        return
    if len(text) > MAX_RULE_CHARS:
        errors["rrule"] = (f"A rule can be at most {MAX_RULE_CHARS:,} characters; this one has {len(text):,}. "
                           "Long EXDATE lists belong in a calendar rule's exclude_dates, or in fewer RRULEs.")
        return
    try:
        parse(schedule)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        errors["rrule"] = f"Not a valid RFC 5545 recurrence rule: {exc}."


# Whole periods of the frequencies whose rules can start later without changing what they mean.
PERIODS = {WEEKLY: timedelta(weeks=1), DAILY: timedelta(days=1), HOURLY: timedelta(hours=1),
           MINUTELY: timedelta(minutes=1), SECONDLY: timedelta(seconds=1)}
# The Gregorian calendar repeats every 400 years, weekdays and leap days included (146,097 days
# are 20,871 weeks), so yearly and monthly rules may start later by multiples of 400 years.
# Easter does not follow that cycle: rules with BYEASTER are left alone.
CALENDAR_CYCLE_YEARS = 400


def started_near(rule, before):
    """A copy of `rule` whose DTSTART is moved forward by whole cycles of the rule, to just before `before`.

    Moving DTSTART by whole multiples of INTERVAL × period keeps every occurrence from `before` on
    (the BY* defaults taken from DTSTART — month, day, weekday, hour, minute, second — do not
    change). Rules with COUNT count from the real start and are not moved.
    """
    start = rule._dtstart  # dateutil offers no public way to read a rule's parts
    if rule._count or start >= before:
        return rule.replace()
    period = PERIODS.get(rule._freq)
    if period is not None:
        step = period * rule._interval
        return rule.replace(dtstart=start + step * ((before - start) // step))
    if rule._freq in (YEARLY, MONTHLY) and not rule._byeaster:
        months_per_step = rule._interval * (12 if rule._freq == YEARLY else 1)
        cycle_years = lcm(months_per_step, CALENDAR_CYCLE_YEARS * 12) // 12
        # Whole cycles that end before the year of `before`, so no occurrence after `before` is skipped.
        cycles = (before.year - start.year - 1) // cycle_years
        if cycles > 0:
            return rule.replace(dtstart=start.replace(year=start.year + cycles * cycle_years))
    return rule.replace()


def can_match(rule):
    """False for a rule whose days of the month exist in none of its months (BYMONTH=2;BYMONTHDAY=30).

    dateutil would walk every candidate period until year 9999 looking for one.
    """
    if not (rule._bymonthday or rule._bynmonthday):
        return True
    longest = max(LONGEST_MONTH[month] for month in (rule._bymonth or range(1, 13)))
    return any(day <= longest for day in rule._bymonthday) or any(-day <= longest for day in rule._bynmonthday)


LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


def _window(rule_set, rules, after, until):
    """The rule set limited to (after, until]: rules moved near `after` and ending at `until`."""
    window = rruleset()
    for source, add in ((rules, window.rrule), (rule_set._exrule, window.exrule)):
        for rule in source:
            bounded = started_near(rule, after)
            # Set directly rather than through replace(): with COUNT, dateutil deprecates passing both.
            bounded._until = until if bounded._until is None else min(bounded._until, until)
            add(bounded)
    for when in rule_set._rdate:
        if after < when <= until:
            window.rdate(when)
    window._exdate = rule_set._exdate
    return window


def _plus_gap(moment):
    return moment + MAX_GAP if moment < LAST_WALL_TIME - MAX_GAP else LAST_WALL_TIME


def wall_times(rule_set, start):
    """The rule set's wall times after `start`, ascending; they end once MAX_GAP passes without one."""
    rules = [rule for rule in rule_set._rrule if can_match(rule)]
    after, until = start, _plus_gap(start)
    while True:
        last = None
        for last in _window(rule_set, rules, after, until).xafter(after):
            yield last
        if last is None or until >= LAST_WALL_TIME:
            return
        after, until = until, _plus_gap(last)


def next_fire_times(schedule, after, count):
    zone = schedule.timezone
    start = start_of_search(after, zone)
    return collect(wall_times(parse(schedule), start), zone, after, count, schedule.dst_nonexistent,
                   schedule.dst_ambiguous)


def describe(schedule):
    lines = [line for line in schedule.rrule.strip().splitlines() if line.upper().startswith("RRULE")]
    return (lines[0] if lines else schedule.rrule.strip()).removeprefix("RRULE:")
