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


# A wall-clock bound as well, far above the CPU one: a call that waits (on a lock, say) burns no CPU.
WALL_CLOCK_FACTOR = 12


@contextmanager
def returns_within(seconds):
    """Fail instead of hanging: a signal interrupts the (main) test thread's Python code after
    `seconds` of the process's CPU time (SIGPROF), or WALL_CLOCK_FACTOR times that on the clock (SIGALRM).

    A generous bound for "does not hang", never a timing assertion. CPU time, as the schedules'
    own budget counts it (runs/schedules/bounds.py): on a box shared with other test workers a
    second of work can take many on the clock. Signals reach only the main thread, which is where
    pytest runs a test; the code under test is then interrupted between two bytecodes, as dateutil's
    and our loops are plain Python.
    """
    def interrupt(signum, frame):
        kind = "of CPU time" if signum == signal.SIGPROF else "on the clock"
        raise Hung(f"did not return within {seconds if signum == signal.SIGPROF else seconds * WALL_CLOCK_FACTOR} s "
                   f"{kind}")

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGPROF, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.setitimer(signal.ITIMER_REAL, seconds * WALL_CLOCK_FACTOR)
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
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for number, handler in previous.items():
            signal.signal(number, handler)


@pytest.fixture
def budget(settings):
    """Schedule computations get 1 s (the default), whatever the environment says; returns the seconds."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SCHEDULE_COMPUTE_SECONDS": 1.0}
    return 1.0
