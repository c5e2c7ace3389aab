"""`python -m agent.runner`: runs one claimed flow run in this (child) process, and reports for itself.

The agent passes everything in the environment (ORCHESTRATOR_FLOW_RUN_ID, _ENTRYPOINT,
_PARAMETERS as JSON, _API_URL, _RUN_TOKEN, _HEARTBEAT_MODE, _RUNNER_HEARTBEAT_SECONDS,
_TASK_RESULT_MAX_BYTES, _AGENT_LOG_BATCH_MAX_LINES (the server's limits, from its register answer),
_AGENT_NAME, _AGENT_PID, _RUNNER_JOURNAL, _SECRET_NAMES, and for stopping _AGENT_CANCEL_GRACE_SECONDS,
_RUNNER_STOP_WINDOW_SECONDS, _HANDBACK_DELAY_SECONDS). _RUN_TOKEN is the run's report token: it
reports for this run only, and the agent's own key is not passed on. _SECRET_NAMES names the
variables holding the run's secrets, redacted from everything the runner sends.

The runner needs its agent only to be started. It sends the flow run's heartbeats, ships its
own logs (Python logging, and everything written to its fds 1 and 2, by the flow or by processes
the flow starts, read through a pipe of its own), and reports the run's final state: COMPLETED
when the flow returns, FAILED when it raises, CANCELLED when it was stopped because the run is
being cancelled. Its exit code tells the agent whether it did (see EXIT_*).

When its agent dies, the runner notices (its parent changes), says so in the run's logs and
finishes the run on its own. With heartbeats off it stops the flow instead and hands the run
back (SCHEDULED): without heartbeats nobody could tell this runner from a dead one, and the run
would be run again while it still runs.

SIGTERM raises FlowRunStopped in the flow's main thread, so its `finally` blocks run; so does the
flow run's heartbeat answering CANCELLING. A report or heartbeat refused as `superseded` (the run
was rescheduled or claimed again, e.g. while this node was cut off) stops the flow the same way,
and the runner then reports nothing: the run belongs to another attempt.

Stopping is bounded, whatever the flow does (see Runner.stop): the runner arms a hard deadline
(the grace, ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS, plus ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS; a
hand-back gets at most half the server's ORCHESTRATOR_HANDBACK_DELAY_SECONDS), gives the flow the
grace, then SIGKILLs every other process of its group, reports the final state, ships its last logs
and os._exit()s. At the deadline it exits wherever it is; a watchdog process SIGKILLs the whole
group shortly after, for a runner that cannot run Python any more (a C call holding the GIL).

Every run ends the same way: the flow's leftover processes are killed before the state is reported,
and a REPORTED_MARKER line in the scratch file is the agent's proof that the report was made (an
exit code 0 alone proves nothing: a flow may call os._exit(0)).
"""

import collections
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

from . import sdk
from .client import ApiClient, ApiError, ServerUnreachable
from .heartbeats import STOP_STATES, start_heartbeats
from .heartbeats import SUPERSEDED as HEARTBEAT_SUPERSEDED
from .logs import LogShipper, redact, redaction_list, storable

# The journal of log lines in the agent's scratch file: lines, and how far the server has them.
JOURNAL_LINE_MARKER = "\x1eorchestrator-log "
JOURNAL_DELIVERED_MARKER = "\x1eorchestrator-delivered "
JOURNAL_MAX_BYTES = 1024 * 1024  # past this, the file is rewritten with the lines not yet delivered

# Exit codes the agent reads. Anything else (a signal, an interpreter that died) means the runner
# crashed, and the agent reports the run CRASHED.
EXIT_REPORTED = 0  # the runner reported the run's final state (or found it already final: a 409)
EXIT_AGENT_REPORTS = 3  # it did not: its verdict is the last VERDICT_MARKER line on its original stderr
EXIT_SUPERSEDED = 4  # a later attempt owns the run: nobody reports for this one
# Prefix of the verdict line; a record separator cannot start normal output.
VERDICT_MARKER = "\x1eorchestrator-verdict "
# Written to the scratch file once the final state is recorded (or found already final), or, with
# SUPERSEDED_MARK, once the runner knows a later attempt owns the run. The agent believes the exit
# codes EXIT_REPORTED and EXIT_SUPERSEDED only with this line.
REPORTED_MARKER = "\x1eorchestrator-reported "
# Written by the watchdog (see start_watchdog) just before it SIGKILLs the group; then the deadline.
WATCHDOG_MARKER = "\x1eorchestrator-watchdog "
SUPERSEDED_MARK = "superseded"

# While the server is away, the runner keeps trying to ship its last log lines for up to
# LOG_DRAIN_SECONDS, then to report the final state for up to REPORT_RETRY_SECONDS. One window
# (sdk.STATE_REPORT_RETRY_SECONDS) for both: an outage the report waits out, the run's last lines
# wait out too (they used to be given up after 60 s while the report waited 600). A stopping
# runner has less: its hard deadline bounds both.
REPORT_RETRY_SECONDS = sdk.STATE_REPORT_RETRY_SECONDS
LOG_DRAIN_SECONDS = REPORT_RETRY_SECONDS
# How often it checks that its agent is still its parent (seconds).
ORPHAN_CHECK_SECONDS = 1.0

# Why a flow was stopped. SIGNALLED (a SIGTERM from outside) is settled as CANCELLED or TERMINATED.
# SUPERSEDED: another attempt has the run (a report or heartbeat was refused as `superseded`); the
# stop reports no state.
CANCELLED, HANDED_BACK, SIGNALLED, TERMINATED = "cancelled", "handed back", "signalled", "terminated"
SUPERSEDED = "superseded"
SILENT_REASONS = (SUPERSEDED,)

# Stopping (seconds). The flow gets the grace (ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS, as the agent's
# own); then the runner has this window (ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS) to kill what is
# left, report and ship its last logs: grace + window is its hard deadline.
DEFAULT_STOP_GRACE_SECONDS = 30.0
DEFAULT_STOP_WINDOW_SECONDS = 10.0
# The server's ORCHESTRATOR_HANDBACK_DELAY_SECONDS unless the agent says otherwise: a handed-back
# run is due again that long after the report, so a hand-back must be over well before. It gets
# half of it, all in (the server refuses a delay under 4 s, so the watchdog's lag fits too).
DEFAULT_HANDBACK_DELAY_SECONDS = 30.0
# The watchdog kills the whole process group this long after the hard deadline.
WATCHDOG_LAG_SECONDS = 1.0
# While a stopped flow has not been interrupted yet, its main thread is signalled again this often.
NUDGE_SECONDS = 0.5
# A signal whose handler does nothing: sent to the main thread, it makes the thread run the handlers
# of signals it took but has not acted on yet (see _stopper). A real-time signal, which flows rarely use.
POKE_SIGNAL = signal.SIGRTMIN + 4
# A flow forking while its group is killed is caught by the next pass; this many at most.
KILL_PASSES = 20

log = logging.getLogger("agent.runner")


class ShippedLogHandler(logging.Handler):
    """Hands each record to the run's log shipper, tagged with the task run it came from."""

    def __init__(self, shipper, flow_run_id):
        super().__init__()
        self.shipper, self.flow_run_id = shipper, flow_run_id

    def emit(self, record):
        try:
            self.shipper.add(self.flow_run_id, self.format(record), level=record.levelno,
                             task_run_id=sdk.current_task_run_id())
        except Exception:  # noqa: BLE001 - logging must never break the flow
            self.handleError(record)


class OriginalStreamHandler(logging.Handler):
    """For the runner's own plumbing (the log shipper, the HTTP client): written to the original
    stderr, never shipped, or a refused log line would be logged, shipped, refused, logged…"""

    def __init__(self, capture):
        super().__init__()
        self.capture = capture

    def emit(self, record):
        self.capture.original(self.format(record))


class OutputCapture:
    """Reads what is written to this process's fds 1 and 2 (by it and by every process it starts)
    through pipes of its own, and passes each line to `on_line(text, level)`.

    The agent used to read these through its pipes, so the logs died with it, and a `print` after
    that raised BrokenPipeError. The fds as they were (the agent's file) stay open as `original`,
    for the runner's own last words.
    """

    STREAMS = ((1, logging.INFO), (2, logging.ERROR))

    def __init__(self, on_line):
        self.on_line = on_line
        self.saved = {}
        self.pumps = []

    def start(self):
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, level in self.STREAMS:
            self.saved[fd] = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            pump = threading.Thread(target=self._pump, args=(read_end, level), name=f"output-{fd}", daemon=True)
            pump.start()
            self.pumps.append(pump)
        sys.stdout.reconfigure(line_buffering=True)
        return self

    def _pump(self, read_end, level):
        with os.fdopen(read_end, "rb") as pipe:
            while chunk := pipe.readline(64 * 1024):
                text = chunk.decode(errors="replace").rstrip("\r\n")
                if text:
                    self.on_line(text, level)

    def stop(self, timeout=2.0):
        """Put fds 1 and 2 back; wait (a little) for the pipes' last lines."""
        if not self.saved:
            return
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        for fd, _ in self.STREAMS:
            os.dup2(self.saved[fd], fd)  # closes this process's write end of the pipe
        # A process the flow started and left running may hold the pipe open: do not wait for it.
        for pump in self.pumps:
            pump.join(timeout)

    def original(self, text):
        """Write `text` to fd 2 as it was before the capture (the agent reads it after the runner exits)."""
        fd = self.saved.get(2, 2)
        try:
            os.write(fd, (text + "\n").encode(errors="replace"))
        except OSError:
            pass


class LogJournal:
    """Every log line also goes to the agent's scratch file (the runner's original stderr) until the
    server has it, so that when the runner dies before its shipper sent them (SIGKILL, the
    out-of-memory killer) the agent ships its last lines. The file is rewritten with only the
    undelivered lines when it grows past JOURNAL_MAX_BYTES."""

    def __init__(self, fd, capacity):
        self.fd = fd
        self.lock = threading.Lock()
        self.pending = collections.deque(maxlen=capacity)  # (seq, encoded line) not delivered yet
        self.size = 0
        self.marker = None  # the REPORTED_MARKER line, kept when the file is rewritten

    def added(self, line):
        encoded = (JOURNAL_LINE_MARKER + json.dumps(line) + "\n").encode(errors="replace")
        with self.lock:
            self.pending.append((line["seq"], encoded))
            self._write(encoded)

    def delivered(self, seq):
        with self.lock:
            while self.pending and self.pending[0][0] <= seq:
                self.pending.popleft()
            if self.size <= JOURNAL_MAX_BYTES:
                self._write(f"{JOURNAL_DELIVERED_MARKER}{seq}\n".encode())
                return
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.size = 0
            for _, encoded in self.pending:
                self._write(encoded)
            if self.marker is not None:
                self._write(self.marker)

    def reported(self, what):
        """Leave the REPORTED_MARKER line (`what`: the state, or SUPERSEDED_MARK)."""
        with self.lock:
            self.marker = f"{REPORTED_MARKER}{what}\n".encode()
            self._write(self.marker)

    def _write(self, data):
        try:
            os.write(self.fd, data)
            self.size += len(data)
        except OSError:
            pass


def load_entrypoint(entrypoint):
    """Import `module:function` (dotted attributes allowed after the colon)."""
    module_name, _, attribute = entrypoint.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"Entrypoint {entrypoint!r} is not of the form module:function")
    target = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def group_members(pgid):
    """{pid: parent pid} of the live processes of process group `pgid` (zombies are not live), from /proc."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members[int(entry)] = int(fields[1])
    return members


def _kill_member(pid, pgid):
    """SIGKILL `pid` if it is still in group `pgid`. Through a pidfd where there is one: the pgid is
    checked on the process the pidfd holds, so a pid reused meanwhile by a stranger is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds here, or the process is gone
        pidfd = None
    try:
        if pid not in group_members_of([pid], pgid):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def group_members_of(pids, pgid):
    """Those of `pids` that are live members of group `pgid`."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(pid)
    return found


def kill_group_members(spare=()):
    """SIGKILL every other process of this process's group (the flow's subprocesses, their children,
    daemons that double-forked but stayed in the group), except the pids in `spare` and their children.

    Only a group leader does this (the agent starts each runner as one): in a group someone else
    leads, the others are not the flow's. os.killpg would kill this process too, before it reports,
    so the members are found in /proc and killed one by one; a process that forks meanwhile leaves
    its child for the next pass. Returns the pids killed.
    """
    me, pgid = os.getpid(), os.getpgrp()
    if pgid != me:
        return []
    killed = []
    for _ in range(KILL_PASSES):
        targets = [pid for pid, parent in group_members(pgid).items()
                   if pid != me and pid not in spare and parent not in spare and pid not in killed]
        if not targets:
            break
        killed.extend(pid for pid in targets if _kill_member(pid, pgid))
    return killed


class Watchdog:
    """A shell in this process group, started with the runner, that SIGKILLs the whole group a given
    time after it is armed: the last resort for a runner that cannot run Python any more (a flow
    holding the GIL in C code starves every other thread of the runner, the hard-deadline timer too).

    Arming is one os.write to its pipe, safe in a signal handler. Before it kills, it writes a
    WATCHDOG_MARKER line to the agent's scratch file, so that the agent can say what happened. It
    ignores SIGTERM, which the group gets when it is stopped; it exits when the runner does (its pipe
    closes), and the runner kills it on its way out anyway.
    """

    SCRIPT = ('trap "" TERM INT HUP; read -r seconds || exit 0; sleep "$seconds"; '
              'printf "%s%s\\n" "$2" "$seconds"; kill -s KILL -- "-$1"')

    def __init__(self, scratch_fd=None):
        self.pid, self.fd, self.armed = None, None, False
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", self.SCRIPT, "runner-watchdog", str(os.getpgrp()), WATCHDOG_MARKER],
                stdin=read_end, stdout=subprocess.DEVNULL if scratch_fd is None else scratch_fd,
                stderr=subprocess.DEVNULL)
        except OSError:
            os.close(write_end)
        else:
            self.pid, self.fd = process.pid, write_end
        finally:
            os.close(read_end)

    def arm(self, seconds):
        """Kill the group in `seconds` (the first call only). No locks: a signal handler calls it."""
        if self.fd is None or self.armed:
            return
        self.armed = True
        try:
            os.write(self.fd, f"{max(seconds, 0):.3f}\n".encode())
        except OSError:
            pass


def _poked(signum, frame):
    """POKE_SIGNAL's handler: its arrival is the point (see Runner._poke_main_thread)."""


def _runner_takes_sigterm():
    """Whether this process's SIGTERM handler is a runner's (see Runner.take_signals)."""
    return getattr(signal.getsignal(signal.SIGTERM), "__func__", None) is Runner._on_sigterm


# Per forking thread: whether _hold_sigterm blocked SIGTERM for the fork under way.
_sigterm_held = threading.local()


def _hold_sigterm():
    """Before a fork in the runner: SIGTERM is blocked in the forking thread, whose mask the child
    inherits, until _release_sigterm. A SIGTERM that reached the child before it first ran (a pool
    terminating a worker it just started, on a loaded machine) ran the inherited handler there, and
    the interpreter's fork handling then forgot it, as it forgets every signal noted before it (they
    are the parent's): the child lived on, and the pool waited for it for ever. Blocked, the signal
    waits until the child has the default action."""
    if _runner_takes_sigterm():
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        _sigterm_held.blocked = signal.SIGTERM not in before


def _release_sigterm():
    """After the fork, in the parent and in the child: SIGTERM as it was before _hold_sigterm."""
    if getattr(_sigterm_held, "blocked", False):
        _sigterm_held.blocked = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _drop_runner_signals():
    """In a process the flow forked (a multiprocessing worker, say): the runner's signal handling is not
    its own. A SIGTERM (a pool terminating its workers) must end the child as it would anywhere else,
    not begin a stop of the run through the copied runner (which would arm the group's watchdog), nor
    be noted in the runner's stop pipe. A handler the flow set itself is left alone. A SIGTERM held
    since the fork (_hold_sigterm) is taken once the default action is back: it ends the child."""
    if _runner_takes_sigterm():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(POKE_SIGNAL, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
    _release_sigterm()


# They act only where a runner took the signals.
os.register_at_fork(before=_hold_sigterm, after_in_parent=_release_sigterm, after_in_child=_drop_runner_signals)


class Runner:
    """One flow run in this process, from the environment the agent gave it."""

    def __init__(self, env):
        self.env = env
        self.flow_run_id = env["ORCHESTRATOR_FLOW_RUN_ID"]
        self.own_pid = os.getpid()  # a child the flow forks has a copy of this runner, not the run's signals
        self.base_url, self.key = env["ORCHESTRATOR_API_URL"], env["ORCHESTRATOR_RUN_TOKEN"]
        self.client = ApiClient(self.base_url, self.key)
        self.mode = env.get("ORCHESTRATOR_HEARTBEAT_MODE", "thread")
        self.interval = float(env.get("ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS") or 0)
        self.beating = self.mode != "off" and self.interval > 0
        self.agent_name = env.get("ORCHESTRATOR_AGENT_NAME", "?")
        self.agent_pid = int(env.get("ORCHESTRATOR_AGENT_PID") or os.getppid())
        self.stop_grace = float(env.get("ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS") or DEFAULT_STOP_GRACE_SECONDS)
        self.stop_window = float(env.get("ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS") or DEFAULT_STOP_WINDOW_SECONDS)
        self.handback_delay = float(env.get("ORCHESTRATOR_HANDBACK_DELAY_SECONDS") or DEFAULT_HANDBACK_DELAY_SECONDS)
        # The run's secrets (env vars the agent named): redacted from every line and message it sends.
        names = [name for name in env.get("ORCHESTRATOR_SECRET_NAMES", "").split(",") if name]
        self.secret_values = [env[name] for name in names if name in env]
        self.redactions = redaction_list(self.secret_values)
        self.shipper = LogShipper(self.client, redactions=self.redactions,
                                  server_max_lines=env.get("ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES") or None)
        self.capture = OutputCapture(lambda text, level: self.shipper.add(self.flow_run_id, text, level=level))
        self.heartbeats = None
        self.orphaned = False
        self.stop_reason = None
        self.stop_lock = threading.Lock()
        self.settle_lock = threading.Lock()
        # Written to (one byte) when a stop is asked for: a signal handler may do that, as it may not
        # take a lock that the code it interrupted holds.
        self.stop_wake_read, self.stop_wake_write = os.pipe()
        self.flow_active = False  # FlowRunStopped is raised only into the flow itself
        self.stop_raised = False
        self.finished = threading.Event()  # the flow returned, raised or was stopped
        self.deadline = None  # time.monotonic() by which a stopping runner has exited
        self.stopped_at = None  # time.monotonic() when the stop was asked for
        self.watchdog = None
        self.ending = False  # a thread (main, or the stopper after the grace) ends the run; one only
        self.exiting = False
        self.reported = None  # what the REPORTED_MARKER line said, once written
        # Whether this process's group is the run's, to kill when it ends: only `python -m agent.runner`
        # started as a group leader (by the agent) says so (main()); a Runner used inside another
        # program must never kill that program's group.
        self.owns_group = False

    # --- Stopping ---------------------------------------------------------------------------

    def stop(self, reason):
        """Stop the flow (from any thread): SIGTERM to the run's process group, the flow's own
        subprocesses included; in this process it becomes FlowRunStopped in the main thread.

        The stop is bounded (the stopper thread, _stopper): grace for the flow to end, then
        every other process of the group is SIGKILLed, the final state reported (not for a silent
        reason such as SUPERSEDED), the last logs shipped, and the process exits, by the hard deadline
        at the latest, wherever the flow is.
        """
        with self.stop_lock:
            if self.stop_reason is not None:
                return
            self.stop_reason = reason
        self._wake_stopper()
        if os.getpgrp() == os.getpid():  # the agent starts it as a group leader; never signal someone else's group
            os.killpg(os.getpgrp(), signal.SIGTERM)
        # A process-directed signal may be taken by another thread, leaving the main one asleep.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    def _wake_stopper(self):
        """Start the stop: arm the watchdog and wake the stopper thread. No locks (see _on_sigterm)."""
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
            if self.watchdog is not None:
                self.watchdog.arm(self.stop_budget(self.stop_reason)[1] + WATCHDOG_LAG_SECONDS)
        try:
            os.write(self.stop_wake_write, b"s")
        except OSError:
            pass

    def _on_sigterm(self, signum, frame):
        # No locks here: this handler may interrupt the main thread while it holds one.
        if os.getpid() != self.own_pid:
            # A child the flow forked, signalled before _drop_runner_signals ran in it (a pool
            # terminating a worker it just started): not the run's stop, which would arm the group's
            # watchdog. The child ends of the signal, as it would without a runner.
            _drop_runner_signals()
            os.kill(os.getpid(), signum)
            return
        if self.stop_reason is None:
            self.stop_reason = SIGNALLED
        self._wake_stopper()
        if self.flow_active and not self.stop_raised:
            self.stop_raised = True
            raise sdk.FlowRunStopped()

    def _on_heartbeat_stop(self, state):
        if self.finished.is_set():
            return  # the flow ended: the main thread reports how, and the server takes it or refuses it
        if state == HEARTBEAT_SUPERSEDED:
            self._superseded()
            return
        log.warning("The run is %s: stopping the flow.", state)
        self.stop(CANCELLED)

    def _superseded(self):
        log.warning("Another attempt has this run now (it was rescheduled or claimed again while this runner "
                    "could not be heard): stopping the flow; this attempt reports nothing more.")
        self.stop(SUPERSEDED)

    def stop_budget(self, reason):
        """(grace, hard deadline) in seconds from the start of a stop for `reason`.

        A hand-back must be over before the server makes the run due again
        (ORCHESTRATOR_HANDBACK_DELAY_SECONDS after the report): it gets half that delay at most, the
        flow half of that.
        """
        grace, deadline = self.stop_grace, self.stop_grace + self.stop_window
        if reason == HANDED_BACK:
            deadline = min(deadline, self.handback_delay / 2)
            grace = min(grace, deadline / 2)
        return max(grace, 0.0), max(deadline, 0.0)

    def _stopper(self):
        """Waits for a stop (waking the main thread when the interpreter noted a SIGTERM that began none);
        then arms the hard deadline, signals the main thread until the flow is interrupted, and ends the
        run itself if the flow does not end within the grace (it ignores FlowRunStopped, or sleeps in
        a thread of its own)."""
        while self.stopped_at is None:  # set before the b"s" that wakes this thread for a stop
            woken_by = os.read(self.stop_wake_read, 64)
            if self.stop_reason is None and bytes([signal.SIGTERM]) in woken_by:
                self._poke_main_thread()
        grace, deadline = self.stop_budget(self.stop_reason)
        self.deadline = self.stopped_at + deadline
        timer = threading.Timer(max(self.deadline - time.monotonic(), 0), self._hard_deadline)
        timer.daemon = True
        timer.start()
        grace_ends = self.stopped_at + grace
        while (left := grace_ends - time.monotonic()) > 0 and not self.finished.wait(min(left, NUDGE_SECONDS)):
            self._nudge_main_thread()
        if self.finished.is_set():
            return  # the main thread ends the run, within the deadline
        log.warning("The flow did not stop within %g s: its runner kills it and ends the run.", grace)
        state, message = self._stopped_outcome(grace)
        code = self._end_run(state, message)
        if code is not None:
            self.exit(code)

    def _poke_main_thread(self):
        """The interpreter noted a SIGTERM (set_wakeup_fd) whose handler has not begun a stop: it lands
        as the main thread went back to sleep, and waits for the thread's next Python. Wake the thread
        without a second SIGTERM: the note may be a forked child's of the flow (a pool's worker being
        terminated), which inherited the wakeup fd, and must not stop the run."""
        for _ in range(2):
            signal.pthread_kill(threading.main_thread().ident, POKE_SIGNAL)
            if self.finished.wait(NUDGE_SECONDS) or self.stop_reason is not None:
                return

    def _nudge_main_thread(self):
        """SIGTERM the main thread again while the flow runs on unstopped. A signal that lands just as
        the main thread goes back to sleep (between the check for signals and the sleep's system call)
        has its handler run only when the thread next runs Python: after a sleep of 600 s, say. Only
        while this runner's handler is the one in place: a flow that set its own is not signalled twice."""
        if self.flow_active and not self.stop_raised and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    def _hard_deadline(self):
        """The hard deadline passed and the run is not ended: leave the agent a verdict, kill the
        group, exit. Nothing here waits on the server or on a lock."""
        if self.exiting:
            return
        self.capture.original(f"The runner could not end the run within its hard deadline "
                              f"({self.deadline - self.stopped_at:g} s after it began to stop): it exits now.")
        reason = self.stop_reason
        if self.reported is None and reason not in SILENT_REASONS:
            # Not settled: that would ask the server. A SIGTERM's verdict is CRASHED; the agent that
            # sent it knows whether it was a cancellation.
            state, message = self._stopped_outcome(self.deadline - self.stopped_at,
                                                   reason=TERMINATED if reason == SIGNALLED else reason)
            self._leave_to_agent(state, message)
        self.exit(self._exit_code_without_report(), flush=False)

    def _exit_code_without_report(self):
        if self.reported == SUPERSEDED_MARK:
            return EXIT_SUPERSEDED
        return EXIT_REPORTED if self.reported is not None else EXIT_AGENT_REPORTS

    def exit(self, code, flush=True):
        """Kill what is left of the group (the watchdog too), flush stdio and _exit: the flow's own
        non-daemon threads must not keep a finished run's process alive. `flush=False` at the hard
        deadline: a stream's lock may be held by a thread that is stuck."""
        self.exiting = True
        self._kill_group()
        for stream in (sys.stdout, sys.stderr) if flush else ():
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    def _kill_group(self, spare=()):
        if self.owns_group:
            kill_group_members(spare)

    def _time_left(self, at_most, reserve=0.0):
        """`at_most` seconds, or less when a stop's hard deadline (less `reserve`) comes first."""
        if self.deadline is None:
            return at_most
        return max(min(at_most, self.deadline - reserve - time.monotonic()), 0.0)

    def why_stopped(self):
        """(state, message) for the task run a stop interrupted; settles the reason first."""
        reason = self._settled_reason()
        if reason == CANCELLED:
            return "CANCELLED", "Cancelled: its flow run was cancelled."
        if reason == HANDED_BACK:
            return "SCHEDULED", "Stopped: its flow run was handed back; a later attempt runs it again."
        if reason == SUPERSEDED:
            return "CRASHED", "Stopped: another attempt of its flow run has the run."  # refused, as all reports now
        return "CRASHED", "The flow's process was stopped by SIGTERM."

    def _settled_reason(self):
        """A SIGTERM from outside is a cancellation when the run is being cancelled; the heartbeat's
        answer says (one request, even with heartbeats off)."""
        with self.settle_lock:
            if self.stop_reason == SIGNALLED:
                try:
                    answer = self.client.post(f"flow_runs/{self.flow_run_id}/heartbeat",
                                              retry_for=self._time_left(10, reserve=self.stop_window / 2))
                except (ApiError, ServerUnreachable):
                    answer = None
                if isinstance(answer, dict) and answer.get("state") in STOP_STATES:
                    self.stop_reason = CANCELLED
                else:
                    self.stop_reason = TERMINATED
            return self.stop_reason

    # --- Orphans ----------------------------------------------------------------------------

    def _watch_agent(self):
        """Notice when the agent dies: this process is then adopted, and its parent changes."""
        while not self.finished.wait(ORPHAN_CHECK_SECONDS):
            if os.getppid() != self.agent_pid:
                self.orphaned = True
                log.warning("Agent %s (pid %d) is gone; this runner finishes the run and reports for itself.",
                            self.agent_name, self.agent_pid)
                if not self.beating:
                    log.warning("Heartbeats are off, so nobody can tell this runner from a dead one: it stops the "
                                "flow and hands the run back rather than risk it running twice.")
                    self.stop(HANDED_BACK)
                return

    # --- The run ------------------------------------------------------------------------------

    def take_signals(self):
        """SIGTERM stops the flow (in the main thread, as every handler runs). The interpreter also notes
        each signal it takes in the stopper's pipe at once (set_wakeup_fd), for a SIGTERM whose handler
        is late (see _stopper); POKE_SIGNAL does nothing but wake the main thread. From the main thread."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(POKE_SIGNAL, _poked)
        os.set_blocking(self.stop_wake_write, False)  # set_wakeup_fd wants it; a full pipe has woken the stopper
        signal.set_wakeup_fd(self.stop_wake_write, warn_on_full_buffer=False)

    def run(self):
        """Run the flow, end the run; returns the exit code (main() exits with it through exit())."""
        self.take_signals()
        # Heartbeats first: mode `process` forks, which is safest before any other thread exists.
        self.heartbeats = start_heartbeats(self.mode, self.client, self.interval, base_url=self.base_url,
                                           key=self.key, on_stop=self._on_heartbeat_stop)
        self.heartbeats.track("flow_runs", self.flow_run_id)
        self.shipper.start()
        handler = ShippedLogHandler(self.shipper, self.flow_run_id)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        self.capture.start()
        if self.env.get("ORCHESTRATOR_RUNNER_JOURNAL") == "1":  # the agent gave it a scratch file for this
            self.shipper.journal = LogJournal(self.capture.saved[2], self.shipper.buffer.maxlen)
        for name in ("agent.logs", "agent.client"):
            plumbing = logging.getLogger(name)
            plumbing.addHandler(OriginalStreamHandler(self.capture))
            plumbing.propagate = False
        if self.owns_group:  # it kills the group
            self.watchdog = Watchdog(self.capture.saved.get(2))
            if self.stopped_at is not None:  # stopped while it started
                self.watchdog.arm(self.stop_budget(self.stop_reason)[1] + WATCHDOG_LAG_SECONDS)
        threading.Thread(target=self._stopper, name="stopper", daemon=True).start()
        threading.Thread(target=self._watch_agent, name="agent-watch", daemon=True).start()
        sdk.bind(sdk.RunContext(
            self.client, self.flow_run_id, self.heartbeats, why_stopped=self.why_stopped,
            on_superseded=self._superseded, secrets=self.secret_values,
            result_max_bytes=int(self.env.get("ORCHESTRATOR_TASK_RESULT_MAX_BYTES") or sdk.DEFAULT_RESULT_MAX_BYTES)))
        try:
            state, message = self._run_flow()
        finally:
            self.finished.set()
            self.heartbeats.stop()
        code = self._end_run(state, message)
        while code is None:  # the stopper ends the run (the flow outlived its grace) and exits the process
            time.sleep(3600)
        return code

    def _run_flow(self):
        """Call the flow; returns the (state, message) the run ends with."""
        returned = False
        try:
            function = load_entrypoint(self.env["ORCHESTRATOR_ENTRYPOINT"])
            parameters = json.loads(self.env.get("ORCHESTRATOR_PARAMETERS") or "{}")
            self.flow_active = True
            try:
                if self.stop_reason is not None:  # stopped before it began
                    raise sdk.FlowRunStopped()
                result = function(**parameters)
                returned = True
            finally:
                self.flow_active = False
        except sdk.FlowRunStopped:
            if not returned:
                return self._stopped_outcome()
        except BaseException as exc:  # noqa: BLE001 - whatever the flow raised, the run failed
            log.error("The flow raised:\n%s", traceback.format_exc().rstrip())
            return "FAILED", storable(f"{type(exc).__name__}: {exc}")  # redacted, then cut, in _end_run
        log.info("Flow returned %s", redact(repr(result), self.redactions)[:500])
        return "COMPLETED", "The flow returned; reported by its runner."

    def _stopped_outcome(self, outlived_grace=None, reason=None):
        """(state, message) of a stopped run; `outlived_grace`: the flow did not stop within that many
        seconds; `reason`: the settled reason, when the caller knows it."""
        reason = reason or self._settled_reason()
        how = (f"the flow did not stop within {outlived_grace:g} s, so its runner killed it"
               if outlived_grace is not None else "the flow stopped when asked")
        if reason == CANCELLED:
            return "CANCELLED", f"Cancelled: {how}; reported by its runner."
        if reason == HANDED_BACK:
            return "SCHEDULED", (f"Handed back by its runner: agent {self.agent_name} (pid {self.agent_pid}) is gone "
                                 f"and heartbeats are off, so nobody could tell this run from a dead one; the flow was "
                                 f"stopped rather than risk running twice ({how}). Task runs that completed stand.")
        if reason == SUPERSEDED:  # not reported (see _end_run)
            return "CRASHED", f"Stopped: another attempt has the run ({how})."
        if outlived_grace is not None:
            return "CRASHED", (f"The flow's process was stopped by SIGTERM; the flow did not stop within "
                               f"{outlived_grace:g} s, so its runner killed it.")
        return "CRASHED", "The flow's process was stopped by SIGTERM before the flow finished."

    def _end_run(self, state, message):
        """Kill the flow's leftover processes, ship the last logs and report (or leave it to the agent);
        returns the exit code, or None when another thread is already ending the run.

        A stopping runner reports first and ships logs after, within its hard deadline; otherwise the
        logs go first (a finished run has its logs before its final state). A hand-back's logs go first
        too: its report (SCHEDULED) begins a new attempt, and the server refuses this attempt's token,
        its log lines included, from then on; they get half the time left, the report the rest.
        """
        with self.stop_lock:
            if self.ending:
                return None
            self.ending = True
        stopping = self.deadline is not None
        message = redact(message, self.redactions)[:sdk.MAX_MESSAGE_CHARS]
        self._kill_group(spare=(self.watchdog and self.watchdog.pid,))  # nothing of the flow outlives its report
        self.capture.stop()
        if self.stop_reason in SILENT_REASONS:  # the run is another attempt's, nothing of this one is heard
            self._mark_reported(SUPERSEDED_MARK)
            self.capture.original(f"Not reporting: {message}")
            self._ship_last_logs()
            return EXIT_SUPERSEDED
        logs_first = not stopping or state == "SCHEDULED"
        if logs_first:
            self._ship_last_logs(reserve=(self.deadline - time.monotonic()) / 2 if stopping else 0.5)
        code = self._report(state, message)
        if not logs_first:
            self._ship_last_logs()
        return code

    def _ship_last_logs(self, reserve=0.5):
        """Ship what is left, for up to LOG_DRAIN_SECONDS (less when a stop's deadline, less `reserve`
        seconds, comes first)."""
        if not self.shipper.stop(drain_seconds=self._time_left(LOG_DRAIN_SECONDS, reserve=reserve)):
            self.capture.original(f"The runner could not ship its last log lines ({len(self.shipper.buffer)}).")

    def _report(self, state, message):
        if state == "CRASHED" and not self.orphaned:
            # SIGTERM from someone else: the agent knows why (e.g. it is shutting down) and says so.
            return self._leave_to_agent(state, message)
        try:
            self.client.post(f"flow_runs/{self.flow_run_id}/state", {"state": state, "message": message},
                             retry_for=self._time_left(REPORT_RETRY_SECONDS, reserve=self.stop_window / 3))
        except ApiError as exc:
            if exc.superseded:
                self.capture.original(f"Not reported {state}: another attempt has the run now.")
                self._mark_reported(SUPERSEDED_MARK)
                return EXIT_SUPERSEDED
            if exc.status != 409:
                return self._leave_to_agent(state, message, f"the server refused it: {exc}")
            # Someone reported a final state first (the agent after a cancellation, a recovery service).
            self.capture.original(f"The run's final state was already set: {exc}")
        except ServerUnreachable as exc:
            return self._leave_to_agent(state, message, f"the server is away: {exc}")
        self._mark_reported(state)
        return EXIT_REPORTED

    def _mark_reported(self, what):
        """The agent's proof that the run needs no report from it (see REPORTED_MARKER)."""
        self.reported = what
        if self.shipper.journal is not None:
            self.shipper.journal.reported(what)
        else:
            self.capture.original(f"{REPORTED_MARKER}{what}")

    def _leave_to_agent(self, state, message, problem=None):
        if problem:
            self.capture.original(f"Could not report {state}: {problem}")
        self.capture.original(VERDICT_MARKER + json.dumps({"state": state, "message": message}))
        return EXIT_AGENT_REPORTS


def main():
    runner = Runner(os.environ)
    runner.owns_group = os.getpgrp() == os.getpid()  # the agent starts each runner as a group leader
    runner.exit(runner.run())


if __name__ == "__main__":
    main()
