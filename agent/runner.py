"""`python -m agent.runner`: runs one claimed flow run in this (child) process, and reports for itself.

The agent passes everything in the environment (ORCHESTRATOR_FLOW_RUN_ID, _ENTRYPOINT,
_PARAMETERS as JSON, _API_URL, _RUN_TOKEN, _HEARTBEAT_MODE, _RUNNER_HEARTBEAT_SECONDS,
_TASK_RESULT_MAX_BYTES, _AGENT_LOG_BATCH_MAX_LINES (the server's limits, from its register answer),
_AGENT_NAME, _AGENT_PID, _RUNNER_JOURNAL, _SECRET_NAMES). _RUN_TOKEN is the run's report token: it
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
"""

import collections
import importlib
import json
import logging
import os
import signal
import sys
import threading
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
# Prefix of the verdict line; a record separator cannot start normal output.
VERDICT_MARKER = "\x1eorchestrator-verdict "

# While the server is away, the runner keeps trying to ship its last log lines for up to
# LOG_DRAIN_SECONDS, then to report the final state for up to REPORT_RETRY_SECONDS. One window
# (sdk.STATE_REPORT_RETRY_SECONDS) for both: an outage the report waits out, the run's last lines
# wait out too (they used to be given up after 60 s while the report waited 600).
REPORT_RETRY_SECONDS = sdk.STATE_REPORT_RETRY_SECONDS
LOG_DRAIN_SECONDS = REPORT_RETRY_SECONDS
# How often it checks that its agent is still its parent (seconds).
ORPHAN_CHECK_SECONDS = 1.0

# Why a flow was stopped. SIGNALLED (a SIGTERM from outside) is settled as CANCELLED or TERMINATED.
# SUPERSEDED: another attempt has the run; nothing more is reported.
CANCELLED, HANDED_BACK, SIGNALLED, TERMINATED = "cancelled", "handed back", "signalled", "terminated"
SUPERSEDED = "superseded"

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


class Runner:
    """One flow run in this process, from the environment the agent gave it."""

    def __init__(self, env):
        self.env = env
        self.flow_run_id = env["ORCHESTRATOR_FLOW_RUN_ID"]
        self.base_url, self.key = env["ORCHESTRATOR_API_URL"], env["ORCHESTRATOR_RUN_TOKEN"]
        self.client = ApiClient(self.base_url, self.key)
        self.mode = env.get("ORCHESTRATOR_HEARTBEAT_MODE", "thread")
        self.interval = float(env.get("ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS") or 0)
        self.beating = self.mode != "off" and self.interval > 0
        self.agent_name = env.get("ORCHESTRATOR_AGENT_NAME", "?")
        self.agent_pid = int(env.get("ORCHESTRATOR_AGENT_PID") or os.getppid())
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
        self.flow_active = False  # FlowRunStopped is raised only into the flow itself
        self.stop_raised = False
        self.finished = threading.Event()

    # --- Stopping ---------------------------------------------------------------------------

    def stop(self, reason):
        """Stop the flow (from any thread): SIGTERM to the run's process group, the flow's own
        subprocesses included; in this process it becomes FlowRunStopped in the main thread."""
        with self.stop_lock:
            if self.stop_reason is not None:
                return
            self.stop_reason = reason
        if os.getpgrp() == os.getpid():  # the agent starts it as a group leader; never signal someone else's group
            os.killpg(os.getpgrp(), signal.SIGTERM)
        # A process-directed signal may be taken by another thread, leaving the main one asleep.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    def _on_sigterm(self, signum, frame):
        with self.stop_lock:
            if self.stop_reason is None:
                self.stop_reason = SIGNALLED
        if self.flow_active and not self.stop_raised:
            self.stop_raised = True
            raise sdk.FlowRunStopped()

    def _on_sigusr1(self, signum, frame):
        # From the heartbeat process: the run's heartbeat answered CANCELLING.
        threading.Thread(target=self.stop, args=(CANCELLED,), daemon=True).start()

    def _on_sigusr2(self, signum, frame):
        # From the heartbeat process: the run's heartbeat was refused, another attempt has the run.
        threading.Thread(target=self._superseded, daemon=True).start()

    def _on_heartbeat_stop(self, state):
        if state == HEARTBEAT_SUPERSEDED:
            self._superseded()
            return
        log.warning("The run is %s: stopping the flow.", state)
        self.stop(CANCELLED)

    def _superseded(self):
        log.warning("Another attempt has this run now (it was rescheduled or claimed again while this runner "
                    "could not be heard): stopping the flow; this attempt reports nothing more.")
        self.stop(SUPERSEDED)

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
        if self.stop_reason == SIGNALLED:
            try:
                answer = self.client.post(f"flow_runs/{self.flow_run_id}/heartbeat", retry_for=10)
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

    def run(self):
        """Run the flow, report its final state; returns the exit code."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGUSR1, self._on_sigusr1)
        signal.signal(signal.SIGUSR2, self._on_sigusr2)
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
        return self._finish(state, message)

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
            return "FAILED", storable(f"{type(exc).__name__}: {exc}")  # redacted, then cut, in _finish
        log.info("Flow returned %s", redact(repr(result), self.redactions)[:500])
        return "COMPLETED", "The flow returned; reported by its runner."

    def _stopped_outcome(self):
        reason = self._settled_reason()
        if reason == CANCELLED:
            return "CANCELLED", "Cancelled: the flow stopped when asked; reported by its runner."
        if reason == SUPERSEDED:
            return None, "Stopped: another attempt has the run."
        if reason == HANDED_BACK:
            return "SCHEDULED", (f"Handed back by its runner: agent {self.agent_name} (pid {self.agent_pid}) is gone "
                                 f"and heartbeats are off, so nobody could tell this run from a dead one; the flow was "
                                 f"stopped rather than risk running twice. Task runs that completed stand.")
        return "CRASHED", "The flow's process was stopped by SIGTERM before the flow finished."

    def _finish(self, state, message):
        """Ship the last logs, then report (or leave to the agent); returns the exit code."""
        message = redact(message, self.redactions)[:sdk.MAX_MESSAGE_CHARS]
        self.capture.stop()
        if not self.shipper.stop(drain_seconds=LOG_DRAIN_SECONDS):
            self.capture.original(f"The runner could not ship its last log lines ({len(self.shipper.buffer)}).")
        if state is None:  # superseded: the run is another attempt's, nothing of this one is heard
            self.capture.original(f"Not reporting: {message}")
            return EXIT_REPORTED
        if state == "CRASHED" and not self.orphaned:
            # SIGTERM from someone else: the agent knows why (e.g. it is shutting down) and says so.
            return self._leave_to_agent(state, message)
        try:
            self.client.post(f"flow_runs/{self.flow_run_id}/state", {"state": state, "message": message},
                             retry_for=REPORT_RETRY_SECONDS)
        except ApiError as exc:
            if exc.superseded:
                self.capture.original(f"Not reported {state}: another attempt has the run now.")
                return EXIT_REPORTED
            if exc.status != 409:
                return self._leave_to_agent(state, message, f"the server refused it: {exc}")
            # Someone reported a final state first (the agent after a cancellation, a recovery service).
            self.capture.original(f"The run's final state was already set: {exc}")
        except ServerUnreachable as exc:
            return self._leave_to_agent(state, message, f"the server is away: {exc}")
        return EXIT_REPORTED

    def _leave_to_agent(self, state, message, problem=None):
        if problem:
            self.capture.original(f"Could not report {state}: {problem}")
        self.capture.original(VERDICT_MARKER + json.dumps({"state": state, "message": message}))
        return EXIT_AGENT_REPORTS


def main():
    return Runner(os.environ).run()


if __name__ == "__main__":
    sys.exit(main())
