"""The heartbeat senders and how a stop reaches the flow: no server of ours, no agent.

- the heartbeat process tells the runner what its beats answered through a pipe, read by a thread
  of the runner: the flow's main thread is not woken by a signal for it;
- a stop whose SIGTERM the main thread did not see (it landed as the thread went back to sleep)
  still interrupts the flow: the runner signals the main thread again, or, for a SIGTERM from
  outside, wakes it so that its handler runs.
"""

import contextlib
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent import sdk
from agent.heartbeats import SUPERSEDED, ProcessHeartbeats


class Answers(BaseHTTPRequestHandler):
    """A flow run's heartbeat answers the state in `server.states[run]`; a run in `server.superseded`
    is refused as another attempt's; a task run's heartbeat answers 204."""

    def do_POST(self):  # noqa: N802 - http.server's name
        kind, target = self.path.rstrip("/").split("/")[-3:-1]
        self.server.beats.append((kind, target))
        if kind == "task_runs":
            self.send_response(204)
            self.end_headers()
            return
        if target in self.server.superseded:
            status, body = 409, {"error": {"code": "superseded", "message": "another attempt has the run"}}
        else:
            status, body = 200, {"state": self.server.states[target]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    httpd.states, httpd.superseded, httpd.beats = {}, set(), []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def runner_signals():
    """runner_signals(runner): the runner takes its signals in this (the main) thread, as run() does;
    put back afterwards, with its stopper thread ended first."""
    from agent.runner import POKE_SIGNAL

    assert threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, POKE_SIGNAL)}
    taken = []

    def take(runner):
        taken.append(runner)
        runner.take_signals()
        stopper = threading.Thread(target=runner._stopper, daemon=True)
        stopper.start()
        runner.stopper_thread = stopper
        return runner

    yield take
    try:
        for runner in taken:
            runner.exiting = True  # its hard deadline must not end this process
            runner.finished.set()
            if runner.stopped_at is None:  # let the stopper past its wait
                runner.stopped_at = time.monotonic()
                runner.stop_reason = runner.stop_reason or "ended by the test"
                os.write(runner.stop_wake_write, b"s")
            runner.stopper_thread.join(5)
            assert not runner.stopper_thread.is_alive()
    finally:
        signal.set_wakeup_fd(-1)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for runner in taken:
            os.close(runner.stop_wake_read), os.close(runner.stop_wake_write)


def a_runner():
    from agent.runner import Runner

    return Runner({"ORCHESTRATOR_FLOW_RUN_ID": "run-1", "ORCHESTRATOR_API_URL": "http://127.0.0.1:9",
                   "ORCHESTRATOR_RUN_TOKEN": "t", "ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS": "60"})


def sleep_as_the_flow(runner, seconds):
    """The flow: sleeps in the main thread; True when FlowRunStopped cut its sleep short (a handler
    that waited for the sleep's end raises too, then)."""
    runner.flow_active = True
    ends = time.monotonic() + seconds
    try:
        time.sleep(seconds)
    except sdk.FlowRunStopped:
        return time.monotonic() < ends
    finally:
        runner.flow_active = False
    return False


def test_the_heartbeat_process_tells_what_its_beats_answered_to_a_thread_not_by_a_signal(server):
    told = []
    signals_before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    server.states["run-1"] = "RUNNING"
    base_url = f"http://127.0.0.1:{server.server_port}/api/accounts/a/workspaces/w"
    beats = ProcessHeartbeats(0.05, base_url=base_url, key="k",
                              on_stop=lambda state: told.append((state, threading.current_thread().name)))
    beats.start()
    try:
        assert beats.process.pid != os.getpid()
        beats.track("flow_runs", "run-1")
        beats.track("task_runs", "task-1")
        assert wait_until(lambda: server.beats.count(("task_runs", "task-1")) >= 2)
        assert told == []  # RUNNING: nothing to tell

        server.states["run-1"] = "CANCELLING"
        assert wait_until(lambda: told)
        seen = server.beats.count(("flow_runs", "run-1"))
        assert wait_until(lambda: server.beats.count(("flow_runs", "run-1")) >= seen + 3)
        assert told == [("CANCELLING", "heartbeat-answers")]  # once, though every beat since answered it

        server.superseded.add("run-1")
        assert wait_until(lambda: len(told) == 2)
        assert told[1] == (SUPERSEDED, "heartbeat-answers")
    finally:
        beats.stop()
    assert not beats.process.is_alive()
    # No signal of this process was taken over for it (the flow's code may use them).
    assert {sig: signal.getsignal(sig) for sig in signals_before} == signals_before


def test_a_heartbeat_process_that_dies_is_replaced_by_beats_from_a_thread(server, caplog):
    """The run goes on when its heartbeat process is killed (the OOM killer, a hand): without beats
    the Zombie Killer would mark a live run CRASHED. A thread of the runner takes over what is
    tracked, and tells what the beats answer as the process did."""
    told = []
    server.states["run-1"] = "RUNNING"
    base_url = f"http://127.0.0.1:{server.server_port}/api/accounts/a/workspaces/w"
    beats = ProcessHeartbeats(0.1, base_url=base_url, key="k", on_stop=told.append).start()
    try:
        beats.track("flow_runs", "run-1")
        beats.track("task_runs", "task-1")
        assert wait_until(lambda: server.beats.count(("task_runs", "task-1")) >= 2)
        os.kill(beats.process.pid, signal.SIGKILL)
        assert wait_until(lambda: beats.fallback is not None)
        seen = server.beats.count(("flow_runs", "run-1"))
        assert wait_until(lambda: server.beats.count(("flow_runs", "run-1")) >= seen + 3)
        assert beats.fallback.thread.is_alive() and beats.fallback.thread.name == "heartbeats"
        assert "The heartbeat process ended (exit code -9) while its run goes on" in caplog.text

        beats.untrack("task_runs", "task-1")  # now the thread's to follow
        beats.track("task_runs", "task-2")
        assert wait_until(lambda: server.beats.count(("task_runs", "task-2")) >= 2)
        tasks_one = server.beats.count(("task_runs", "task-1"))
        server.states["run-1"] = "CANCELLING"
        assert wait_until(lambda: told)
        assert told[0] == "CANCELLING" and server.beats.count(("task_runs", "task-1")) <= tasks_one + 1
    finally:
        beats.stop()
    assert wait_until(lambda: not beats.fallback.thread.is_alive(), timeout=5)
    stopped_at = len(server.beats)
    time.sleep(0.3)
    assert len(server.beats) == stopped_at


def test_a_heartbeat_process_stopped_by_its_runner_is_not_replaced(server, caplog):
    server.states["run-1"] = "RUNNING"
    base_url = f"http://127.0.0.1:{server.server_port}/api/accounts/a/workspaces/w"
    beats = ProcessHeartbeats(0.05, base_url=base_url, key="k").start()
    beats.track("flow_runs", "run-1")
    assert wait_until(lambda: len(server.beats) >= 2)
    beats.stop()
    assert not beats.process.is_alive()
    stopped_at = len(server.beats)
    time.sleep(0.4)
    assert beats.fallback is None and len(server.beats) == stopped_at
    assert "heartbeat process ended" not in caplog.text


def test_a_stopped_flow_is_interrupted_though_its_main_thread_slept_through_the_first_signal(runner_signals):
    """The race it covers: the stop's SIGTERM lands after the main thread last looked for signals and
    before it blocked again (say, between two sleeps), so its handler waits for the thread's next
    Python: 20 s here. Here the stop is asked for and the main thread is never signalled by stop(),
    which is what the main thread saw in that race; the stopper must signal it (again)."""
    from agent.runner import CANCELLED

    runner = runner_signals(a_runner())

    def stop_without_signalling_the_main_thread():
        time.sleep(0.2)
        runner.stop_reason = CANCELLED
        runner._wake_stopper()

    interrupted = False
    runner.flow_active = True
    threading.Thread(target=stop_without_signalling_the_main_thread, daemon=True).start()
    try:
        time.sleep(20)  # the flow
    except sdk.FlowRunStopped:
        interrupted = True
    finally:
        runner.flow_active = False
    assert interrupted  # and the stopper ends (runner_signals)


def test_a_flow_with_its_own_sigterm_handler_is_not_signalled_again(monkeypatch):
    from agent.runner import CANCELLED

    runner = a_runner()
    sent = []
    monkeypatch.setattr(signal, "pthread_kill", lambda ident, signum: sent.append(signum))
    runner.flow_active, runner.stop_reason = True, CANCELLED
    previous = signal.signal(signal.SIGTERM, runner._on_sigterm)
    try:
        runner._nudge_main_thread()
        assert sent == [signal.SIGTERM]
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the flow's own
        runner._nudge_main_thread()
        runner.stop_raised = True
        signal.signal(signal.SIGTERM, runner._on_sigterm)
        runner._nudge_main_thread()  # FlowRunStopped was raised already
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sent == [signal.SIGTERM]


def test_a_cancellation_told_after_the_flow_ended_stops_nothing(monkeypatch):
    """The main thread is reporting how the flow ended: a stop now would only race that report (and
    its hard deadline could end the runner mid-report)."""
    from agent.runner import CANCELLED

    runner = a_runner()
    sent = []
    monkeypatch.setattr(os, "killpg", lambda pgid, signum: sent.append(("group", signum)))
    monkeypatch.setattr(signal, "pthread_kill", lambda ident, signum: sent.append(("main", signum)))
    runner.finished.set()
    runner._on_heartbeat_stop("CANCELLING")
    runner._on_heartbeat_stop(SUPERSEDED)
    assert (runner.stop_reason, runner.stopped_at, sent) == (None, None, [])

    runner.finished.clear()  # while the flow runs, the same answer stops it
    runner._on_heartbeat_stop("CANCELLING")
    assert runner.stop_reason == CANCELLED and ("main", signal.SIGTERM) in sent


def test_an_outside_sigterm_whose_handler_is_late_still_interrupts_the_flow(runner_signals):
    """The agent SIGTERMs the group, and the signal lands as the main thread goes back to sleep: the
    interpreter took it (its C handler ran) but the runner's handler waits for the thread's next
    Python. Here the C handler runs in another thread, which leaves the main thread asleep in the
    same way; the stopper, which the interpreter's note woke, must wake it."""
    from agent.runner import SIGNALLED

    runner = runner_signals(a_runner())
    threading.Thread(target=lambda: (time.sleep(0.2), signal.pthread_kill(threading.get_ident(), signal.SIGTERM)),
                     daemon=True).start()
    assert sleep_as_the_flow(runner, 20)
    assert runner.stop_reason == SIGNALLED


def test_a_sigterm_noted_for_a_forked_child_of_the_flow_stops_nothing(runner_signals):
    """A child the flow forked (a pool's worker) inherits the wakeup fd: its SIGTERM is noted in the
    runner's pipe as well. The runner wakes its main thread, which finds nothing to do."""
    runner = runner_signals(a_runner())
    threading.Thread(target=lambda: (time.sleep(0.2), os.write(runner.stop_wake_write, bytes([signal.SIGTERM]))),
                     daemon=True).start()
    assert not sleep_as_the_flow(runner, 1.5)
    assert runner.stop_reason is None and runner.stopped_at is None


@contextlib.contextmanager
def a_flow_running_beside_a_watchdog_pipe(runner_signals):
    """A runner that took the signals, its flow running, its watchdog's "shell" a pipe; after the
    block: the watchdog was not armed (nothing written to the pipe), and no stop began."""
    from agent.runner import Watchdog

    runner = runner_signals(a_runner())
    armed_read, armed_write = os.pipe()
    os.set_blocking(armed_read, False)
    runner.watchdog = Watchdog.__new__(Watchdog)
    runner.watchdog.pid, runner.watchdog.fd, runner.watchdog.armed = None, armed_write, False
    runner.flow_active = True
    try:
        yield runner
        with pytest.raises(BlockingIOError):
            os.read(armed_read, 64)  # the watchdog was not armed
        assert runner.stop_reason is None and runner.stopped_at is None
    finally:
        runner.flow_active = False
        os.close(armed_read), os.close(armed_write)


def test_a_worker_the_flow_forked_ends_on_sigterm_and_stops_nothing(runner_signals):
    """Leaving `with multiprocessing.Pool()` terminates its workers (SIGTERM). A forked worker has a
    copy of the runner: it must not take the SIGTERM as the run's stop, whose first act is to arm the
    group's watchdog (a pipe the worker shares), which would SIGKILL the whole run later."""
    import multiprocessing

    with a_flow_running_beside_a_watchdog_pipe(runner_signals):
        context = multiprocessing.get_context("fork")
        started = context.Event()
        worker = context.Process(target=lambda: (started.set(), time.sleep(30)), daemon=True)
        worker.start()
        assert started.wait(20)
        worker.terminate()
        worker.join(20)
        assert worker.exitcode == -signal.SIGTERM  # ended by it, as anywhere else


def test_a_worker_signalled_before_its_fork_hook_ran_ends_and_stops_nothing(runner_signals):
    """The race of the test above: the SIGTERM reaches a just-forked worker before the fork hook
    that drops the runner's handler has run in it (seen in CI: the handler raised inside the hook and
    armed the watchdog, which SIGKILLed the run). The copied handler itself must end the worker."""
    import multiprocessing

    with a_flow_running_beside_a_watchdog_pipe(runner_signals) as runner:
        worker = multiprocessing.get_context("fork").Process(
            target=lambda: (runner._on_sigterm(signal.SIGTERM, None), time.sleep(30)), daemon=True)
        worker.start()
        worker.join(20)
        assert worker.exitcode == -signal.SIGTERM


def test_a_worker_terminated_before_it_first_ran_ends_of_its_sigterm(runner_signals):
    """The race before the one above: the SIGTERM reaches a just-forked worker before the worker has
    run at all (a loaded machine, a pool terminated at once). The inherited handler notes it there, and
    the interpreter's fork handling then forgets what was noted before it (it was the parent's): the
    worker lived on (a pool waits for a terminated worker for ever). Parent and worker share one CPU
    here, so the worker first runs when the parent waits for it; it then waits for its pipe to close,
    and exits 7 if its SIGTERM was lost."""
    runner_signals(a_runner())
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    ends = []
    try:
        for _ in range(20):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(write_end)
                os.read(read_end, 1)
                os._exit(7)
            os.close(read_end)
            os.kill(pid, signal.SIGTERM)
            os.close(write_end)
            ends.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    finally:
        os.sched_setaffinity(0, cpus)
    assert ends == [-signal.SIGTERM] * 20


def test_the_stopper_waits_until_a_stop_has_begun_whatever_wakes_it(runner_signals):
    """stop() sets its reason, then its start time, then wakes the stopper: another signal's note
    that wakes the stopper in between must not have it begin a stop that has no start time yet."""
    from agent.runner import CANCELLED

    runner = runner_signals(a_runner())
    runner.stop_reason = CANCELLED
    os.write(runner.stop_wake_write, bytes([signal.SIGINT]))  # the interpreter's note of another signal
    time.sleep(0.3)
    runner._wake_stopper()  # the rest of stop()
    assert wait_until(lambda: runner.deadline is not None)
    assert runner.stopper_thread.is_alive()  # waiting out the grace
