"""The kinds of schedule. Each kind module offers validate (its structure, cheap), next_fire_times
and describe; this module computes any schedule's fire times within the bounds of `bounds.py`, and
refuses a rule that never fires or costs too much to evaluate, naming its field."""

import zoneinfo
from contextlib import nullcontext

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from runs.models import ScheduleKind

from . import calendar, cron, interval, rrule
from .bounds import LAST_INSTANT, MAX_GAP, MAX_YEARS_WITHOUT_FIRING, TooExpensive, time_budget

KINDS = {
    ScheduleKind.INTERVAL: interval,
    ScheduleKind.CRON: cron,
    ScheduleKind.RRULE: rrule,
    ScheduleKind.CALENDAR: calendar,
}
# The field that holds each kind's rule: errors about the rule name it.
RULE_FIELDS = {
    ScheduleKind.INTERVAL: "interval_seconds",
    ScheduleKind.CRON: "cron",
    ScheduleKind.RRULE: "rrule",
    ScheduleKind.CALENDAR: "calendar",
}
# Kinds computed under the time budget: dateutil may walk for hours without yielding (RRULE), and
# calendar rules walk days through the holidays package. Intervals are arithmetic and croniter
# jumps field by field, so theirs is bounded by construction (see bounds.py for the cost of watching).
WATCHED_KINDS = {ScheduleKind.RRULE, ScheduleKind.CALENDAR}
# Kinds whose rules repeat for ever: one with no fire time within MAX_YEARS_WITHOUT_FIRING has none
# at all (31 February), which is an error wherever it is computed. An RRULE or an interval may end
# (UNTIL, COUNT, year 9999): that is a schedule that has run its course.
ENDLESS_KINDS = {ScheduleKind.CRON, ScheduleKind.CALENDAR}
NEVER_FIRES = f"This rule never fires: it has no fire time in the next {MAX_YEARS_WITHOUT_FIRING} years."
# Catch-up after downtime creates at most this many past runs per schedule, whatever is asked.
MAX_CATCHUP_RUNS = 1000


class ScheduleComputeError(ValidationError):
    """A schedule's fire times cannot be computed: too expensive, or the rule fails when evaluated.

    A ValidationError naming the field (`{"rrule": ["…"]}`), so the API answers it as a 400 and
    forms show it on the field; the scheduler pass skips that schedule and names it.
    """


def rule_field(schedule):
    """The field an error about `schedule`'s rule names."""
    return RULE_FIELDS.get(schedule.kind, "kind")


def _kind_module(schedule):
    module = KINDS.get(schedule.kind)
    if module is None:
        raise ScheduleComputeError({"kind": f"Unknown schedule kind {schedule.kind!r}."})
    return module


class evaluating:
    """`with evaluating(schedule, "its next 10 fire times"):` computes within the time budget (for the
    watched kinds); any failure inside, the budget's included, leaves as a ScheduleComputeError naming
    the rule's field. Keep database calls out of it (see `time_budget`)."""

    def __init__(self, schedule, what, seconds=None):
        self.schedule, self.what = schedule, what
        self.budget = time_budget(seconds) if schedule.kind in WATCHED_KINDS else nullcontext()

    def __enter__(self):
        self.budget.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.budget.__exit__(exc_type, exc, tb)  # an expired deadline comes out as TooExpensive
        except TooExpensive as expired:
            raise self._named(expired) from None
        if exc is None or isinstance(exc, ScheduleComputeError) or not isinstance(exc, Exception):
            return False
        raise self._named(exc) from exc  # a rule that fails when evaluated is the user's input: a 400

    def _named(self, exc):
        field = rule_field(self.schedule)
        if isinstance(exc, TooExpensive):
            return ScheduleComputeError({field: (
                f"Too expensive to evaluate: computing {self.what} took more than {exc.seconds:g} s. A rule "
                "that matches rarely at a fine frequency (FREQ=SECONDLY with BY… filters or BYSETPOS), or a "
                "COUNT counted from a DTSTART long ago, costs that much; say it with a coarser FREQ or a "
                "recent DTSTART.")})
        return ScheduleComputeError({field: f"This rule cannot be evaluated: {type(exc).__name__}: {exc}"})


def next_fire_times(schedule, after, count, *, seconds=None):
    """The next `count` fire times strictly after `after`, aware, in UTC, ascending.

    Bounded: none at or past LAST_INSTANT, none after MAX_GAP without a fire time, and for the
    watched kinds at most `seconds` (default SCHEDULE_COMPUTE_SECONDS) of computing. Raises
    ScheduleComputeError (a ValidationError naming the field) when the rule cannot be evaluated,
    or is of an ENDLESS_KINDS kind and never fires.
    """
    if count <= 0:
        return []
    module = _kind_module(schedule)
    with evaluating(schedule, f"its next {count} fire times", seconds):
        times = module.next_fire_times(schedule, after, count)
    times = within_reach(times, after)
    if not times and schedule.kind in ENDLESS_KINDS:
        raise ScheduleComputeError({rule_field(schedule): NEVER_FIRES})
    return times


def within_reach(times, after):
    """`times` up to the first one at or past LAST_INSTANT or more than MAX_GAP after the one before
    (or after `after`): a schedule that goes that long without firing has ended."""
    kept, last = [], after
    for when in times:
        if when >= LAST_INSTANT or when - last > MAX_GAP:
            break
        kept.append(when)
        last = when
    return kept


def validate_schedule(schedule, now=None):
    """Raise ValidationError naming each bad field of `schedule` and what is wrong with it.

    Beyond its structure, the rule must fire within MAX_YEARS_WITHOUT_FIRING years of `now`, and its
    next SCHEDULER_RUNS_AHEAD fire times (what the scheduler keeps) must compute within the budget.
    """
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
    if not errors:
        _check_it_fires(schedule, now or timezone.now(), errors)
    if errors:
        raise ValidationError(errors)


def _check_it_fires(schedule, now, errors):
    ahead = max(1, settings.ORCHESTRATOR["SCHEDULER_RUNS_AHEAD"])
    try:
        times = next_fire_times(schedule, now, ahead)
    except ScheduleComputeError as exc:
        errors.update(exc.message_dict)
        return
    if not times:
        # An interval always fires within 100 years of its anchor: only a distant anchor can be the cause.
        field = "anchor" if schedule.kind == ScheduleKind.INTERVAL and schedule.anchor else rule_field(schedule)
        errors[field] = NEVER_FIRES


def describe(schedule):
    """A short human description of when `schedule` fires ("" when its rule cannot be read)."""
    try:
        text = _kind_module(schedule).describe(schedule)
    except Exception:  # noqa: BLE001 (a description is a nicety: a bad stored rule must not break a page)
        return ""
    zone = str(schedule.timezone)
    return text if zone == "UTC" else f"{text} ({zone})"
