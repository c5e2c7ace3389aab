"""The time budget of schedule computations: it stops Python code in any thread, nests, and leaves
the thread's own trace function (a debugger's, coverage's) as it found it."""

import sys
import threading
import time

import pytest

from runs.schedules.bounds import TooExpensive, time_budget


def spin():
    """Python calls forever, as dateutil's rrule does when nothing matches."""
    def step(i):
        return i + 1

    i = 0
    while True:
        i = step(i)


def in_a_thread(target, timeout=5):
    """Run `target` in another thread (a web request's, where signal.alarm cannot help); its outcome."""
    outcome = {}

    def run():
        started = time.monotonic()
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 (the outcome is what the test looks at)
            outcome["raised"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the budget did not stop the computation"
    return outcome


def test_a_budget_stops_a_computation_in_a_web_request_thread():
    def bounded():
        with time_budget(0.2):
            spin()

    outcome = in_a_thread(bounded)
    assert isinstance(outcome["raised"], TooExpensive) and "0.2 s" in str(outcome["raised"])
    assert outcome["seconds"] < 4


def test_an_inner_budget_ends_first_and_the_outer_one_still_holds():
    seen = []

    def nested():
        with time_budget(0.6):
            with pytest.raises(TooExpensive):
                with time_budget(0.1):
                    spin()
            seen.append("inner ended")
            spin()

    outcome = in_a_thread(nested)
    assert seen == ["inner ended"] and isinstance(outcome["raised"], TooExpensive)


def test_an_outer_deadline_that_passed_ends_a_later_inner_budget_at_once():
    def nested():
        with time_budget(0.1):
            with pytest.raises(TooExpensive):
                spin()
            with time_budget(10):  # would be generous, but the outer 0.1 s are spent
                spin()

    outcome = in_a_thread(nested)
    assert isinstance(outcome["raised"], TooExpensive) and outcome["seconds"] < 4


def test_the_thread_s_own_trace_function_is_kept_called_and_restored():
    calls = []

    def theirs(frame, event, arg):
        calls.append(event)
        return None

    def traced():
        sys.settrace(theirs)
        try:
            with time_budget(5):
                sum(i for i in range(3))
            after = sys.gettrace()
            with pytest.raises(TooExpensive):
                with time_budget(0.05):
                    spin()
            return after, sys.gettrace()
        finally:
            sys.settrace(None)

    results = []
    in_a_thread(lambda: results.append(traced()))
    assert results == [(theirs, theirs)] and "call" in calls


def test_a_computation_within_its_budget_returns_its_result_and_leaves_no_trace():
    def quick():
        with time_budget(5):
            value = sorted(str(i) for i in range(1000))[0]
        assert sys.gettrace() is None
        return value

    results = []
    in_a_thread(lambda: results.append(quick()))
    assert results == ["0"]


def test_waiting_is_not_charged_only_the_threads_own_cpu_time():
    """A loaded server (other threads holding the GIL, other processes the cores) must judge a rule as
    a quiet one does: the budget counts the thread's CPU time, so a wait does not use it up."""
    def waits_then_works():
        with time_budget(0.2):
            time.sleep(0.5)  # what a busy machine does to a request: wall-clock time passes
            return sorted(str(i) for i in range(20_000))[0]

    results = []
    outcome = in_a_thread(lambda: results.append(waits_then_works()))
    assert results == ["0"] and "raised" not in outcome and outcome["seconds"] >= 0.5
