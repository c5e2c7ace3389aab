"""Helpers for the scheduler tests: unsaved schedules to read fire times from."""

import zoneinfo
from datetime import datetime, timezone

import pytest

from runs.models import Schedule

UTC = timezone.utc


def make(kind, tz="UTC", **fields):
    """An unsaved, validated schedule of `kind` in zone `tz`."""
    schedule = Schedule(kind=kind, timezone=zoneinfo.ZoneInfo(tz), **fields)
    schedule.clean()
    return schedule


def local(times, tz):
    """Fire times as local wall-clock strings, the way a person checks them."""
    zone = zoneinfo.ZoneInfo(tz)
    return [t.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") for t in times]


def utc(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def flow(ws):
    from tests import factories

    return factories.flow(ws, name="etl")
