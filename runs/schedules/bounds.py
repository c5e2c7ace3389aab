"""How far and how long a schedule's fire times are looked for: structural limits and a time budget.

Structural limits. A schedule whose next fire time is more than MAX_YEARS_WITHOUT_FIRING away has
ended (validation refuses one that has no fire time within them from now): cron through
croniter's own guard, RRULE and calendar rules in windows of that length, intervals because they
are at most 100 years. No fire time is at or past LAST_INSTANT: a later one cannot be shown in
every zone (9999-12-31 in UTC is year 10000 east of it).

Time budget. dateutil's rrule walks candidate periods (years … seconds) and yields only those that
match, so a rule that matches rarely or never (`FREQ=SECONDLY;BYSETPOS=2`, a COUNT rule that must
be walked from a DTSTART in year 1) keeps a single `next()` busy for hours, with no loop of ours
in between where steps could be counted. `signal.alarm` works only in the main thread, and a web
request runs in a worker thread that nothing can stop from outside. So `time_budget` watches from
inside: `sys.settrace` installs, for the current thread only, a hook that CPython calls on every
Python function call and generator resumption. dateutil calls a Python helper at least once per
candidate period (its longest stretch without one, the SECONDLY inner loop, is at most 86,400
additions: milliseconds), so the hook reads the clock often enough, and raises once the deadline
has passed. The budget is the thread's own CPU time (`time.thread_time`, read on every 32nd call):
what a rule costs to evaluate, the same on a quiet server and a loaded one, where wall-clock time
(or waiting for the GIL behind other requests) once failed a rule that takes half the budget alone.

Cost. While a hook is set, CPython 3.11 runs every frame of the thread in its slower tracing mode:
fire-time computations took 2 to 2.7 times their CPU (the bench's mix of interval, cron and RRULE
schedules, 1,000 of each kind). So only the kinds that need it are watched (`WATCHED_KINDS` in
runs/schedules/__init__.py): intervals are arithmetic and croniter jumps field by field (at most
about 2 ms per fire time, even for a rule that never matches), so theirs are bounded by construction.

Limit. CPython drops a hook that raised. Should the deadline pass exactly while a finalizer runs
(which swallows the exception), the computation would go on unwatched until `check()` (called
between fire times) puts the hook back, within the structural limits above.
"""

import sys
import threading
import time
from datetime import datetime, timedelta, timezone

from django.conf import settings

MAX_YEARS_WITHOUT_FIRING = 100
MAX_GAP = timedelta(days=36_525)  # 100 years of 365.25 days, as the longest interval
LAST_INSTANT = datetime(9999, 12, 30, tzinfo=timezone.utc)

_local = threading.local()


def budget_seconds():
    """The CPU time one computation of fire times may take (setting SCHEDULE_COMPUTE_SECONDS)."""
    return settings.ORCHESTRATOR["SCHEDULE_COMPUTE_SECONDS"]


class TooExpensive(Exception):
    """A computation of fire times ran past its time budget."""

    def __init__(self, seconds):
        super().__init__(f"took more than {seconds:g} s")
        self.seconds = seconds


class _DeadlinePassed(BaseException):
    """Raised by the hook inside the watched code. Not an Exception: no library's `except Exception`
    may swallow it and carry on (unwatched, since CPython drops a hook that raised)."""


class _Watch:
    """One thread's hook, with the deadline of the innermost budget; it keeps calling the thread's
    own trace function (a debugger's, coverage's), if any."""

    def __init__(self, previous):
        self.previous = previous
        self.deadline = float("inf")
        self.calls = 0
        clock, watch = time.thread_time, self  # a system call: read on every 32nd call only
        if previous is None:
            def hook(frame, event, arg):
                watch.calls += 1
                if not watch.calls & 31 and clock() > watch.deadline:
                    raise _DeadlinePassed
                return None  # no line events: they would cost far more
        else:
            def hook(frame, event, arg):
                watch.calls += 1
                if not watch.calls & 31 and clock() > watch.deadline:
                    raise _DeadlinePassed
                return previous(frame, event, arg)
        self.hook = hook


class time_budget:
    """`with time_budget(seconds):` the Python code inside raises TooExpensive once it has used `seconds`
    (default SCHEDULE_COMPUTE_SECONDS) of its thread's CPU time. Per thread. Nested, a budget ends at the earlier of its own
    deadline and the enclosing one's. Keep database calls out of it: they must not stop halfway."""

    def __init__(self, seconds=None):
        self.seconds = budget_seconds() if seconds is None else seconds

    def __enter__(self):
        watch = getattr(_local, "watch", None)
        self.outermost = watch is None
        if self.outermost:
            watch = _local.watch = _Watch(sys.gettrace())
        self.watch, self.outer_deadline = watch, watch.deadline
        watch.deadline = min(self.outer_deadline, time.thread_time() + self.seconds)
        sys.settrace(watch.hook)
        return self

    def __exit__(self, exc_type, exc, tb):
        watch = self.watch
        watch.deadline = self.outer_deadline
        if self.outermost:
            _local.watch = None
            sys.settrace(watch.previous)
        else:
            sys.settrace(watch.hook)  # the enclosing budget's watch goes on (a hook that raised was dropped)
        if exc_type is not None and issubclass(exc_type, _DeadlinePassed):
            raise TooExpensive(self.seconds) from None
        return False


def check():
    """Between two steps of our own loops: end a computation past its budget, and put back a hook
    CPython dropped (see Limit above). Costs a lookup when no budget is running."""
    watch = getattr(_local, "watch", None)
    if watch is None:
        return
    if time.thread_time() > watch.deadline:
        raise _DeadlinePassed
    if sys.gettrace() is not watch.hook:
        sys.settrace(watch.hook)
