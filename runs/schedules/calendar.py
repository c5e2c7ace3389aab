"""Calendar rules: what cron cannot say (business days, holidays, month and quarter ends).

A calendar rule is a JSON object in `Schedule.calendar`, read as base rule → filters → adjustment
→ times of day, all in the schedule's zone:

    {
      "base": {"rule": "nth_weekday", "nth": -1, "weekday": "FR"},
      "holidays": {"country": "US", "subdivision": "NY"},
      "filters": [{"type": "months", "months": [3, 6, 9, 12]}, {"type": "business_days"}],
      "adjustment": "previous_business_day",
      "times": ["09:00"]
    }

- `base.rule`: `every_day`; `business_days` (Mon–Fri, minus holidays when given);
  `day_of_month` with `day` (1..31, or -1 for the last day; a day a month lacks is skipped);
  `nth_weekday` with `nth` (1..5, or -1..-5 counting from the month's end) and `weekday` (MO..SU);
  `first_business_day_of_month`; `last_business_day_of_month`; `last_business_day_of_quarter`;
  `first_business_day_after_quarter_end`.
- `holidays` (optional): a country (ISO code) and subdivision of the `holidays` package; a
  business day is a weekday that is not one of their public holidays.
- `filters` (optional, all must pass): `{"type": "months", "months": [1..12]}`,
  `{"type": "weekdays", "weekdays": ["MO", ...]}`, `{"type": "business_days"}`,
  `{"type": "not_holidays"}`, `{"type": "exclude_dates", "dates": ["2026-12-24"]}`.
- `adjustment` (optional): `none` (default), `next_business_day` or `previous_business_day`:
  a date that is not a business day moves; two dates that land on one day fire once.
- Times: `times`, a list of "HH:MM[:SS]" (default ["00:00"]), or `window`:
  `{"start": "09:00", "end": "17:00", "every_minutes": 30}`, both ends included.
"""

import functools
import heapq
import json
from datetime import date, datetime, time, timedelta

from .bounds import MAX_GAP
from .dst import collect, start_of_search

WEEKDAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
WEEKDAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
BASE_RULES = {
    "every_day": "Every day",
    "business_days": "Every business day",
    "day_of_month": None,
    "nth_weekday": None,
    "first_business_day_of_month": "First business day of the month",
    "last_business_day_of_month": "Last business day of the month",
    "last_business_day_of_quarter": "Last business day of the quarter",
    "first_business_day_after_quarter_end": "First business day after a quarter end",
}
FILTERS = {"months", "weekdays", "business_days", "not_holidays", "exclude_dates"}
ADJUSTMENTS = {"none", "next_business_day", "previous_business_day"}
# How far an adjustment may move a date: longer runs of holidays than this do not exist.
MAX_SHIFT = timedelta(days=31)
# The longest rule accepted, as JSON text: some 1,400 excluded dates.
MAX_RULE_CHARS = 20_000


@functools.lru_cache(maxsize=256)
def holiday_calendar(country, subdivision):
    """The public holidays of a country (and subdivision); years fill in as they are asked for."""
    return _holidays_lib().country_holidays(country, subdiv=subdivision or None)


def _holidays_lib():
    # Imported on first use (~10 MiB): most processes, and most schedules, never name a country.
    import holidays

    return holidays


class Calendar:
    """A parsed, validated calendar rule; `dates(start)` yields its fire dates in order."""

    def __init__(self, spec):
        self.spec = spec
        base = spec.get("base") or {}
        self.rule = base.get("rule")
        self.base = base
        place = spec.get("holidays") or {}
        self.country = place.get("country")
        self.subdivision = place.get("subdivision")
        # Excluded dates as a set: a list of thousands, read for every day, would cost millions of comparisons.
        self.filters = [{**f, "dates": frozenset(f.get("dates") or [])} if f["type"] == "exclude_dates" else f
                        for f in spec.get("filters") or []]
        self.adjustment = spec.get("adjustment") or "none"
        # Months no months filter lets through are skipped whole.
        self.months = None
        for f in self.filters:
            if f["type"] == "months":
                self.months = set(f["months"]) if self.months is None else self.months & set(f["months"])

    # --- business days ---------------------------------------------------------------------
    def is_holiday(self, day):
        return bool(self.country) and day in holiday_calendar(self.country, self.subdivision)

    def is_business_day(self, day):
        return day.weekday() < 5 and not self.is_holiday(day)

    def next_business_day(self, day, step=1):
        while not self.is_business_day(day):
            day += timedelta(days=step)
        return day

    def last_business_day_of_month(self, year, month):
        return self.next_business_day(_month_end(year, month), step=-1)

    # --- base rule ---------------------------------------------------------------------------
    def base_days(self, year, month):
        """The days of `month` of `year` that the base rule picks, ascending."""
        rule, first, end = self.rule, date(year, month, 1), _month_end(year, month)
        if rule in ("every_day", "business_days"):
            days = [first + timedelta(days=i) for i in range(end.day)]
            return days if rule == "every_day" else [d for d in days if self.is_business_day(d)]
        if rule == "day_of_month":
            wanted = self.base["day"]
            day = wanted if wanted > 0 else end.day + 1 + wanted
            return [first.replace(day=day)] if 1 <= day <= end.day else []  # a day the month lacks is skipped
        if rule == "nth_weekday":
            weekday, nth = WEEKDAYS.index(self.base["weekday"]), self.base["nth"]
            if nth > 0:
                day = 1 + (weekday - first.weekday()) % 7 + 7 * (nth - 1)
            else:
                day = end.day - (end.weekday() - weekday) % 7 + 7 * (nth + 1)
            return [first.replace(day=day)] if 1 <= day <= end.day else []
        if rule == "first_business_day_of_month" or (rule == "first_business_day_after_quarter_end"
                                                     and month in (1, 4, 7, 10)):
            day = self.next_business_day(first)
        elif rule == "last_business_day_of_month" or (rule == "last_business_day_of_quarter" and month % 3 == 0):
            day = self.last_business_day_of_month(year, month)
        elif rule in BASE_RULES:
            return []
        else:
            raise ValueError(f"unknown base rule {rule!r}")
        return [day] if (day.year, day.month) == (year, month) else []

    def passes_filters(self, day):
        for f in self.filters:
            kind = f["type"]
            if kind == "months" and day.month not in f["months"]:
                return False
            if kind == "weekdays" and WEEKDAYS[day.weekday()] not in f["weekdays"]:
                return False
            if kind == "business_days" and not self.is_business_day(day):
                return False
            if kind == "not_holidays" and self.is_holiday(day):
                return False
            if kind == "exclude_dates" and day.isoformat() in f["dates"]:
                return False
        return True

    def adjust(self, day):
        if self.adjustment == "next_business_day":
            return self.next_business_day(day, 1)
        if self.adjustment == "previous_business_day":
            return self.next_business_day(day, -1)
        return day

    def dates(self, start):
        """Fire dates from `start` on, ascending, no repeats (adjusted dates are put back in order).

        Month by month; they end once MAX_GAP passes without one, or with the calendar (year 9999).
        """
        pending, last, found_at = [], None, start
        first = start - MAX_SHIFT
        year, month = first.year, first.month
        while True:
            if self.months is None or month in self.months:
                for day in self.base_days(year, month):
                    if day >= first and self.passes_filters(day):
                        heapq.heappush(pending, self.adjust(day))
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            # A date more than MAX_SHIFT before the next base day can no longer be overtaken.
            horizon = date(year, month, 1) - MAX_SHIFT if year <= date.max.year else date.max
            while pending and pending[0] < horizon:
                ready = heapq.heappop(pending)
                if ready != last and ready >= start:
                    found_at = ready
                    yield ready
                last = ready
            if year > date.max.year or horizon - found_at > MAX_GAP:
                return

    # --- times of day ------------------------------------------------------------------------
    def times_of_day(self):
        window = self.spec.get("window")
        if window:
            start, end = _parse_time(window["start"]), _parse_time(window["end"])
            step = timedelta(minutes=window["every_minutes"])
            moment, last = datetime.combine(date.min, start), datetime.combine(date.min, end)
            found = []
            while moment <= last:
                found.append(moment.time())
                moment += step
            return found
        return sorted({_parse_time(t) for t in self.spec.get("times") or ["00:00"]})

    def wall_times(self, start):
        times = self.times_of_day()
        for day in self.dates(start):
            for moment in times:
                yield datetime.combine(day, moment)


def _month_end(year, month):
    first_of_next = date(year + month // 12, month % 12 + 1, 1)
    return first_of_next - timedelta(days=1)


def _parse_time(text):
    return time.fromisoformat(text)


# --- the kind interface --------------------------------------------------------------------

def validate(schedule, errors):
    """Name what is wrong with `schedule.calendar`, under the field `calendar` (whether it fires is
    checked by the caller)."""
    size = len(json.dumps(schedule.calendar))
    if size > MAX_RULE_CHARS:
        errors["calendar"] = (f"A calendar rule can be at most {MAX_RULE_CHARS:,} characters of JSON; this one "
                              f"has {size:,}.")
        return
    problem = _problem(schedule.calendar)
    if problem:
        errors["calendar"] = problem


def _problem(spec):  # noqa: C901 (one message per mistake reads best as one list)
    if not isinstance(spec, dict) or not spec:
        return 'A calendar schedule needs a rule such as {"base": {"rule": "business_days"}, "times": ["09:00"]}.'
    unknown = set(spec) - {"base", "holidays", "filters", "adjustment", "times", "window"}
    if unknown:
        return f"Unknown key(s) {', '.join(sorted(unknown))}."
    base = spec.get("base")
    if not isinstance(base, dict) or base.get("rule") not in BASE_RULES:
        return f"base.rule must be one of {', '.join(BASE_RULES)}."
    if base["rule"] == "day_of_month" and not (isinstance(base.get("day"), int) and (1 <= base["day"] <= 31 or base["day"] == -1)):
        return "base.day must be a day of the month 1..31, or -1 for the last day."
    if base["rule"] == "nth_weekday":
        nth = base.get("nth")
        if not isinstance(nth, int) or nth == 0 or not -5 <= nth <= 5:
            return "base.nth must be 1..5, or -1..-5 counting from the end of the month (-1: the last)."
        if base.get("weekday") not in WEEKDAYS:
            return f"base.weekday must be one of {', '.join(WEEKDAYS)}."
    place = spec.get("holidays")
    if place is not None:
        if not isinstance(place, dict) or not place.get("country"):
            return 'holidays must name a country, e.g. {"country": "US", "subdivision": "NY"}.'
        supported = _holidays_lib().list_supported_countries()
        country, subdivision = place["country"], place.get("subdivision")
        if country not in supported:
            return f"holidays.country {country!r} is not a supported country code (ISO 3166, e.g. 'US', 'GB', 'DE')."
        if subdivision and subdivision not in supported[country]:
            return f"holidays.subdivision {subdivision!r} is not a subdivision of {country}."
    filters = spec.get("filters", [])
    if not isinstance(filters, list):
        return "filters must be a list."
    for f in filters:
        if not isinstance(f, dict) or f.get("type") not in FILTERS:
            return f"each filter needs a type, one of {', '.join(sorted(FILTERS))}."
        if f["type"] == "months" and not (isinstance(f.get("months"), list) and f["months"]
                                          and all(isinstance(m, int) and 1 <= m <= 12 for m in f["months"])):
            return "a months filter needs months, a list of 1..12."
        if f["type"] == "weekdays" and not (isinstance(f.get("weekdays"), list) and f["weekdays"]
                                            and all(w in WEEKDAYS for w in f["weekdays"])):
            return f"a weekdays filter needs weekdays, a list of {', '.join(WEEKDAYS)}."
        if f["type"] == "exclude_dates":
            try:
                [date.fromisoformat(d) for d in f.get("dates") or []]
            except (TypeError, ValueError):
                return "an exclude_dates filter needs dates as YYYY-MM-DD."
    if spec.get("adjustment", "none") not in ADJUSTMENTS:
        return f"adjustment must be one of {', '.join(sorted(ADJUSTMENTS))}."
    if "times" in spec and "window" in spec:
        return "Give times or a window, not both."
    try:
        if "window" in spec:
            window = spec["window"]
            start, end = _parse_time(window["start"]), _parse_time(window["end"])
            every = window.get("every_minutes")
            if not isinstance(every, int) or every <= 0:
                return "window.every_minutes must be a whole number of minutes, at least 1."
            if end < start:
                return "window.end must not be before window.start."
        else:
            times = spec.get("times", ["00:00"])
            if not isinstance(times, list) or not times:
                return 'times must be a non-empty list such as ["09:00", "17:30"].'
            [_parse_time(t) for t in times]
    except (KeyError, TypeError, ValueError):
        return 'Times of day are "HH:MM" or "HH:MM:SS"; a window needs start, end and every_minutes.'
    return None


def next_fire_times(schedule, after, count):
    zone = schedule.timezone
    start = start_of_search(after, zone).date()
    calendar = Calendar(schedule.calendar)
    return collect(calendar.wall_times(start), zone, after, count, schedule.dst_nonexistent, schedule.dst_ambiguous)


def describe(schedule):
    calendar = Calendar(schedule.calendar)
    base = calendar.base
    text = BASE_RULES.get(calendar.rule)
    if calendar.rule == "day_of_month":
        text = "Last day of the month" if base["day"] == -1 else f"Day {base['day']} of the month"
    elif calendar.rule == "nth_weekday":
        nth = base["nth"]
        order = {1: "First", 2: "Second", 3: "Third", 4: "Fourth", 5: "Fifth", -1: "Last"}.get(
            nth, f"{_ordinal(-nth)} to last" if nth < 0 else _ordinal(nth))
        text = f"{order} {WEEKDAY_NAMES[WEEKDAYS.index(base['weekday'])]} of the month"
    parts = [text]
    for f in calendar.filters:
        if f["type"] == "months":
            parts.append("in " + ", ".join(date(2000, m, 1).strftime("%B") for m in sorted(f["months"])))
        elif f["type"] == "weekdays":
            parts.append("only on " + ", ".join(WEEKDAY_NAMES[WEEKDAYS.index(w)] for w in f["weekdays"]))
        elif f["type"] == "business_days":
            parts.append("business days only")
        elif f["type"] == "not_holidays":
            parts.append("not on holidays")
        elif f["type"] == "exclude_dates":
            parts.append("except " + ", ".join(f.get("dates") or []))
    if calendar.adjustment != "none":
        parts.append("moved to the " + calendar.adjustment.replace("_", " ") + " if not one")
    window = calendar.spec.get("window")
    if window:
        parts.append(f"every {window['every_minutes']} minutes between {window['start']} and {window['end']}")
    else:
        parts.append("at " + ", ".join(calendar.spec.get("times") or ["00:00"]))
    if calendar.country:
        place = calendar.country + (f"-{calendar.subdivision}" if calendar.subdivision else "")
        parts.append(f"(holidays: {place})")
    return ", ".join(parts[:-1]) + " " + parts[-1] if calendar.country else ", ".join(parts)


def _ordinal(n):
    return {1: "First", 2: "Second", 3: "Third", 4: "Fourth", 5: "Fifth"}.get(n, f"{n}th")

