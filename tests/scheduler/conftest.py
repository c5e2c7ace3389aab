"""Helpers for the scheduler tests: unsaved schedules to read fire times from."""

import signal
import zoneinfo
from contextlib import contextmanager
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


class Hung(BaseException):
    """A call that did not return in time. Not an Exception: no `except Exception` in the code under
    test may swallow it and carry on."""


@contextmanager
def returns_within(seconds):
    """Fail instead of hanging: SIGALRM interrupts the (main) test thread's Python code after `seconds`.

    A generous bound for "does not hang", never a timing assertion. Signals reach only the main
    thread, which is where pytest runs a test; the code under test is then interrupted between two
    bytecodes, as dateutil's and our loops are plain Python.
    """
    def interrupt(signum, frame):
        raise Hung(f"did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Hung as exc:
        # Raised afresh, naming where it was stuck: pytest cannot show a frame interrupted in the
        # middle of an instruction (its tb_lineno is None and the report itself crashes).
        frames = []
        tb = exc.__traceback__
        while tb:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        stuck = frames[-2] if len(frames) > 1 else frames[-1]  # the last frame is `interrupt` itself
        code = stuck.f_code
        raise Hung(f"{exc}; it was in {code.co_name} ({code.co_filename}:{stuck.f_lineno})") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def budget(settings):
    """Schedule computations get 1 s (the default), whatever the environment says; returns the seconds."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SCHEDULE_COMPUTE_SECONDS": 1.0}
    return 1.0
