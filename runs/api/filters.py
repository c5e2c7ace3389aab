"""Query-parameter parsing shared by the list endpoints: bad input is a 400 naming the parameter."""

import uuid
from datetime import timezone as dt_timezone

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from runs.models import State

TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def parse_boolean(raw):
    """True/False from 'true'/'false' (or 1/0, yes/no); ValueError with the client's message."""
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise ValueError("Use true or false.")


def parse_states(raw):
    """Run states from a comma-separated list, in any case; None when it names none."""
    states = [s.strip().upper() for s in raw.split(",") if s.strip()]
    unknown = sorted(set(states) - set(State.values))
    if unknown:
        raise ValueError(f"Unknown state(s): {', '.join(unknown)}; use {', '.join(State.values)}.")
    return states or None


def parse_uuid(raw):
    """A run's or task run's id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValueError("Use the id (a UUID) of a run.") from None


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


def uuid_param(params, name):
    """parse_uuid of the parameter `name`; None when absent; a 400 naming it when it is not one."""
    raw = params.get(name)
    if not raw:
        return None
    try:
        return parse_uuid(raw)
    except ValueError as exc:
        raise serializers.ValidationError({name: [str(exc)]}) from None

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
