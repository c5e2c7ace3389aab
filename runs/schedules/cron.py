"""Cron schedules: 5 fields, or 6 with seconds first (as in Quartz and Spring)."""

from datetime import datetime

from croniter import croniter
from croniter.croniter import CroniterError
from cron_descriptor import ExpressionDescriptor, Options

from .bounds import MAX_YEARS_WITHOUT_FIRING
from .dst import collect, start_of_search


def _fields(expression):
    return expression.split()


def validate(schedule, errors):
    expression = (schedule.cron or "").strip()
    if not expression:
        errors["cron"] = "A cron schedule needs a cron expression, e.g. '*/5 * * * *'."
        return
    n = len(_fields(expression))
    if n not in (5, 6):
        errors["cron"] = f"A cron expression has 5 fields (or 6 with seconds first); {expression!r} has {n}."
        return
    try:
        croniter(expression, second_at_beginning=True)
    except (CroniterError, ValueError, KeyError) as exc:
        errors["cron"] = f"{expression!r} is not a valid cron expression: {exc}."


def next_fire_times(schedule, after, count):
    zone = schedule.timezone
    # croniter looks at most `max_years_between_matches` years ahead for each next time, jumping
    # field by field (about 2 ms when nothing matches, as on 31 February). Given explicitly, its
    # iterator then simply ends instead of raising CroniterBadDateError: the schedule has ended.
    iterator = croniter(schedule.cron.strip(), start_of_search(after, zone), second_at_beginning=True,
                        max_years_between_matches=MAX_YEARS_WITHOUT_FIRING)
    return collect(iterator.all_next(datetime), zone, after, count, schedule.dst_nonexistent,
                   schedule.dst_ambiguous)


def describe(schedule):
    expression = schedule.cron.strip()
    # cron-descriptor reads a 6-field expression with seconds first, like we do.
    try:
        options = Options()
        options.use_24hour_time_format = True
        return ExpressionDescriptor(expression, options).get_description()
    except Exception:  # a description is a nicety, never a reason to fail a page
        return f"cron {expression}"
