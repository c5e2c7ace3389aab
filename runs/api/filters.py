"""Query-parameter parsing shared by the list endpoints: bad input is a 400 naming the parameter."""

import uuid
from datetime import timezone as dt_timezone

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from runs.models import State

TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def boolean_param(params, name):
    """True/False from 'true'/'false' (or 1/0, yes/no); None when absent."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise serializers.ValidationError({name: ["Use true or false."]})


def utc_time(raw):
    """A datetime in UTC from ISO 8601 text (naive means UTC); None when `raw` is empty; ValueError
    with a message for the client otherwise.

    Converted to UTC here because PostgreSQL refuses offsets past ±15:59 that Python accepts, and
    a time near year 1 or 9999 may not exist in UTC at all: both are the client's 400, not a 500.
    """
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        value = parse_datetime(raw.replace(" ", "+"))  # a '+' in a query string arrives as a space
    except ValueError:
        value = None
    if value is None:
        raise ValueError("Use an ISO 8601 date-time, e.g. 2026-01-31T08:00:00Z.")
    if timezone.is_naive(value):
        return value.replace(tzinfo=dt_timezone.utc)
    try:
        return value.astimezone(dt_timezone.utc)
    except OverflowError:
        raise ValueError("This date-time is out of range in UTC.") from None


def time_param(params, name):
    """utc_time of the parameter `name`; a 400 naming it when it is not one."""
    try:
        return utc_time(params.get(name))
    except ValueError as exc:
        raise serializers.ValidationError({name: [str(exc)]}) from None


def states_param(params, name="state"):
    """Run states from a comma-separated list, in any case; None when absent or empty."""
    states = [s.strip().upper() for s in (params.get(name) or "").split(",") if s.strip()]
    unknown = sorted(set(states) - set(State.values))
    if unknown:
        raise serializers.ValidationError(
            {name: [f"Unknown state(s): {', '.join(unknown)}; use {', '.join(State.values)}."]})
    return states or None


def uuid_param(params, name):
    """A run's or task run's id; None when absent."""
    raw = params.get(name)
    if not raw:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise serializers.ValidationError({name: ["Use the id (a UUID) of a run."]}) from None


def int_param(params, name, *, minimum=None):
    """An integer; None when absent."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise serializers.ValidationError({name: ["Use a whole number."]}) from None
    if minimum is not None and value < minimum:
        raise serializers.ValidationError({name: [f"Use a number of at least {minimum}."]})
    return value


def within_time_window(queryset, params, field):
    """`queryset` with `field` ≥ `since` and < `until` where the query string gives them."""
    since, until = time_param(params, "since"), time_param(params, "until")
    if since:
        queryset = queryset.filter(**{f"{field}__gte": since})
    if until:
        queryset = queryset.filter(**{f"{field}__lt": until})
    return queryset
