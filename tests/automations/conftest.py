"""Automation tests: a workspace without its defaults (tests add the automations they need), events
built in memory with an injected clock, and a way to see what fired."""

import itertools
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest

from automations.models import Automation, Firing
from events.models import Event

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=dt_timezone.utc)
_names = itertools.count(1)


@pytest.fixture
def bare_ws(ws):
    """`ws` without the default automations, so a test sees only its own."""
    Automation.objects.filter(workspace=ws).delete()
    return ws


def at(seconds):
    return T0 + timedelta(seconds=seconds)


def event(ws, name, seconds=0, kind="flow-run", id="r1", related=(), resource_name=None):
    """An event of `ws` that occurred `seconds` after T0 (not saved: on_events gets instances)."""
    resource = {"kind": kind, "id": str(id)}
    if resource_name:
        resource["name"] = resource_name
    return Event(id=uuid.uuid4(), workspace_id=getattr(ws, "pk", ws), occurred=at(seconds), received=at(seconds),
                 name=name, resource=resource, related=list(related), payload={})


def automation(ws, trigger, actions=(), enabled=True, name=None):
    return Automation.objects.create(workspace=ws, name=name or f"automation {next(_names)}", trigger=trigger,
                                     actions=list(actions), enabled=enabled)


def reactive(names, threshold=1, within=0, for_each=None, **match):
    return {"type": "event", "posture": "reactive", "match": {"name": list(names), **match},
            "threshold": threshold, "within": within, "for_each": for_each}


def proactive(after, expect, within, for_each="resource", **match):
    return {"type": "event", "posture": "proactive", "after": list(after), "expect": list(expect),
            "match": match, "within": within, "for_each": for_each}


def firings(auto):
    return list(Firing.objects.filter(automation=auto).order_by("fired", "pk"))
