"""The agent's main loop: register, poll and claim, run each claimed flow in a runner process.

Threads: the poll loop (main), one per running flow (starts its runner, waits for it, reports
only what the runner could not), the agent's own heartbeat, the log shipper and the healthcheck
server.

Who reports what: the runner (agent/runner.py) reports its run's final state and ships its logs
itself, so a run outlives an agent that dies. Reports about a run authenticate with the run's
report token from the claim (never the agent's key, which stays out of the flow's environment);
a report answered `superseded` means another attempt has the run now, and nothing more is said. The agent reports RUNNING when it starts the
runner, and the final state only when the runner could not: killed by a signal, a crashed
interpreter (CRASHED, with the signal or exit code and the runner's last output), a verdict the
runner left it (exit code EXIT_AGENT_REPORTS), a run it ended because it is being cancelled
(CANCELLED), or its own shutdown (CRASHED). A 409 then means the runner got there first. Exit code
EXIT_REPORTED (or EXIT_SUPERSEDED) counts only with the runner's REPORTED_MARKER line in its scratch
file: a flow that calls os._exit(0) bypasses the runner, and its run is CRASHED.

When a runner has exited, the agent SIGKILLs what is left of its process group before it reports
anything, so no process of the flow outlives the run's report.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .client import ApiError, ServerUnreachable
from .health import start_health_server
from .logs import LogShipper, redact, redaction_list
from .runner import (
    DEFAULT_HANDBACK_DELAY_SECONDS,
    DEFAULT_STOP_WINDOW_SECONDS,
    EXIT_AGENT_REPORTS,
    EXIT_REPORTED,
    EXIT_SUPERSEDED,
    JOURNAL_DELIVERED_MARKER,
    JOURNAL_LINE_MARKER,
    REPORT_RETRY_SECONDS,  # state reports are retried this long while the server is away
    REPORTED_MARKER,
    SUPERSEDED_MARK,
    VERDICT_MARKER,
    WATCHDOG_LAG_SECONDS,
    WATCHDOG_MARKER,
    group_members,
)

log = logging.getLogger("agent")

# The agent's credentials in its own environment: not passed on to the flows it runs.
AGENT_SECRETS = ("ORCHESTRATOR_API_KEY", "ORCHESTRATOR_API_KEY_FILE", "ORCHESTRATOR_AGENT_KEY_FD")

# Consecutive failed (or missed) polls after which /health answers 503.
UNHEALTHY_AFTER_POLLS = 3
# At shutdown, how long a runner may take between SIGTERM and SIGKILL (seconds).
SHUTDOWN_KILL_SECONDS = 5
# How long the agent tries to ship what a runner left unshipped before it reports the final state.
LOG_DRAIN_SECONDS = 60
# After SIGKILLing what is left of a runner's process group, how long the agent waits for it to be gone.
GROUP_GONE_SECONDS = 2.0
# How much of a runner's scratch file the agent reads when the runner did not report (its journal
# keeps it under about 1 MiB).
OUTPUT_TAIL_BYTES = 2 * 1024 * 1024


class Execution:
    """One claimed flow run in its runner process."""

    def __init__(self, agent, run):
        self.agent = agent
        self.run = run
        self.run_id = run["id"]
        # Reports about this run carry its token; a server from before tokens sends none.
        self.token = run.get("token") or agent.key
        self.client = agent.client.with_key(self.token)
        self.secrets = run.get("secrets") or {}
        self.redactions = redaction_list(self.secrets.values())
        self.process = None
        self.lock = threading.Lock()
        self.exited = threading.Event()
        self.abandoned = False  # set at shutdown: the agent gave up waiting for it
        self.cancelled = False  # the run is being cancelled: the agent ends its process
        self.reaped = False  # its runner was waited for: its pid (the group's id) may belong to a stranger now
        self.thread = threading.Thread(target=self._execute, name=f"run-{self.run_id[:8]}", daemon=True)

    def start(self):
        self.thread.start()

    def _report(self, state, message="", **extra):
        """Report `state`; returns None when it was recorded, else the ApiError or ServerUnreachable."""
        try:
            self.client.post(f"flow_runs/{self.run_id}/state",
                             {"state": state, "message": redact(message, self.redactions), **extra},
                             retry_for=REPORT_RETRY_SECONDS)
            return None
        except ApiError as exc:
            if exc.superseded:
                log.info("Run %s: not reported %s: another attempt has the run now.", self.run_id, state)
            elif exc.status == 409:
                log.info("Run %s: not reported %s, its state was set meanwhile: %s", self.run_id, state, exc)
            else:
                log.warning("Run %s: could not report %s: %s", self.run_id, state, exc)
            return exc
        except ServerUnreachable as exc:
            log.warning("Run %s: could not report %s: %s", self.run_id, state, exc)
            return exc

    def _execute(self):
        agent = self.agent
        missing = self.run.get("missing_secrets") or []
        if missing:
            self._report("FAILED", f"The flow's version needs the secret(s) {', '.join(missing)}, which this workspace "
                                   f"does not have (or cannot decrypt with its ORCHESTRATOR_SECRETS_KEY).")
            return
        interval = agent.runner_heartbeat_seconds if agent.heartbeat_mode != "off" else None
        # The server keeps whole seconds; the beats themselves may come faster.
        declared = max(round(interval), 1) if interval else None
        refused = self._report("RUNNING", f"Started by agent {agent.name}.", heartbeat_interval=declared)
        if refused:
            if isinstance(refused, ApiError) and isinstance(refused.body, dict) \
                    and refused.body.get("current_state") == "CANCELLING":
                self._report("CANCELLED", f"Cancelled before agent {agent.name} started it.")
            return
        if not self.run.get("entrypoint"):
            self._report("FAILED", "The flow has no version with an entrypoint to run.")
            return
        # The agent's own key never reaches the flow: the runner reports with the run's token.
        inherited = {k: v for k, v in os.environ.items() if k not in AGENT_SECRETS}
        env = {**inherited, **self.run.get("env", {}), **self.secrets,
               "ORCHESTRATOR_SECRET_NAMES": ",".join(self.secrets),
               "ORCHESTRATOR_FLOW_RUN_ID": self.run_id, "ORCHESTRATOR_ENTRYPOINT": self.run["entrypoint"],
               "ORCHESTRATOR_PARAMETERS": json.dumps(self.run.get("parameters") or {}),
               "ORCHESTRATOR_API_URL": agent.api_url, "ORCHESTRATOR_RUN_TOKEN": self.token,
               "ORCHESTRATOR_HEARTBEAT_MODE": agent.heartbeat_mode,
               "ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS": str(interval or 0),
               "ORCHESTRATOR_TASK_RESULT_MAX_BYTES": str(agent.task_result_max_bytes),
               "ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES": str(agent.log_batch_max_lines or ""),
               "ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS": str(agent.cancel_grace_seconds),
               "ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS": str(agent.runner_stop_window_seconds),
               "ORCHESTRATOR_HANDBACK_DELAY_SECONDS": str(agent.handback_delay_seconds),
               "ORCHESTRATOR_AGENT_NAME": agent.name, "ORCHESTRATOR_AGENT_PID": str(os.getpid()),
               "ORCHESTRATOR_RUNNER_JOURNAL": "1", "PYTHONUNBUFFERED": "1"}
        # The runner reads its own output once it runs. This scratch file, which outlives this agent,
        # gets what it writes before (an interpreter that cannot start) or after (its last words),
        # and the journal of its log lines not yet delivered, for when it dies unreported.
        with tempfile.TemporaryFile() as output:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "agent.runner"], env=env, stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as exc:
                self._report("CRASHED", f"Could not start the flow's process: {exc}")
                return
            with self.lock:
                self.process = process
                cancelled = self.cancelled
            if cancelled:
                self._end_in_background(self.cancel_kill_seconds())
            code = self._wait_and_end_group(process)
            start = max(output.seek(0, os.SEEK_END) - OUTPUT_TAIL_BYTES, 0)
            output.seek(start)
            # Split on newlines only: str.splitlines() would also split at the markers' record separator.
            lines = output.read().decode(errors="replace").split("\n")[1 if start else 0:]  # no half line
        reported = [line[len(REPORTED_MARKER):] for line in lines if line.startswith(REPORTED_MARKER)]
        if code == EXIT_REPORTED and reported and reported[-1] != SUPERSEDED_MARK:
            log.info("Run %s: its runner reported the final state.", self.run_id)
            return
        if code == EXIT_SUPERSEDED and reported and reported[-1] == SUPERSEDED_MARK:
            log.info("Run %s: a later attempt owns it; its runner stopped and nobody reports for this one.",
                     self.run_id)
            return
        shipper = self.new_shipper()
        verdict = self._ship_what_the_runner_left(lines, shipper)
        shipper.drain(LOG_DRAIN_SECONDS)  # a finished run has its logs before its final state
        watchdog = next((line for line in reversed(lines) if line.startswith(WATCHDOG_MARKER)), None)
        self._report(*self._final_state(code, verdict, watchdog))

    def _wait_and_end_group(self, process):
        """Wait for the runner to exit, SIGKILL what is left of its process group (a flow's child that
        ignores SIGTERM, a daemon that double-forked), then reap it; returns its exit code.

        The group is killed before the runner is reaped: until then its pid, the group's id, cannot be
        taken by another process, so the signal reaches no stranger.
        """
        try:
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # reaped already (cannot happen here, but then the pid is not ours)
            pass
        with self.lock:
            self.exited.set()
            if process.returncode is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                else:  # a SIGKILLed process takes a moment to die: not a live one left when the report goes
                    deadline = time.monotonic() + GROUP_GONE_SECONDS
                    while group_members(process.pid) and time.monotonic() < deadline:
                        time.sleep(0.01)
            code = process.wait()
            self.reaped = True
        return code

    def new_shipper(self):
        """A shipper of this run's lines: its token, its secrets redacted, the server's line limit."""
        return LogShipper(self.client, redactions=self.redactions, server_max_lines=self.agent.log_batch_max_lines)

    def _ship_what_the_runner_left(self, lines, shipper):
        """Queue the journal's undelivered lines and the runner's other output; returns its verdict line."""
        delivered, journal, output, verdict = 0, [], [], None
        for line in lines:
            if line.startswith(JOURNAL_LINE_MARKER):
                journal.append(line[len(JOURNAL_LINE_MARKER):])
            elif line.startswith(JOURNAL_DELIVERED_MARKER):
                delivered = max(delivered, int(line[len(JOURNAL_DELIVERED_MARKER):] or 0))
            elif line.startswith(VERDICT_MARKER):
                verdict = line
            elif line.startswith((REPORTED_MARKER, WATCHDOG_MARKER)):
                pass
            elif line.strip():
                output.append(line)
        for encoded in journal:
            try:
                record = json.loads(encoded)
                if record["seq"] > delivered:
                    shipper.add(self.run_id, record["message"], level=record["level"],
                                           task_run_id=record.get("task_run_id"), timestamp=record.get("timestamp"))
            except (ValueError, KeyError, TypeError):
                pass
        for line in output[-100:]:
            shipper.add(self.run_id, f"[runner] {line}", level=logging.ERROR)
        return verdict

    def _final_state(self, code, verdict, watchdog=None):
        """(state, message) for a runner that did not report, from what the agent knows and its exit
        (`watchdog`: the line the runner's watchdog wrote before it killed the group, if it did)."""
        agent = self.agent
        if self.cancelled:
            return "CANCELLED", (f"Cancelled: agent {agent.name} ended the flow's process (SIGTERM, then SIGKILL "
                                 f"after {self.cancel_kill_seconds():g} s).")
        if self.abandoned:
            return "CRASHED", (f"Agent {agent.name} stopped before the run finished (grace period "
                               f"{agent.grace_seconds:g} s); the flow's process was ended.")
        if code == EXIT_AGENT_REPORTS and verdict:
            try:
                said = json.loads(verdict[len(VERDICT_MARKER):])
                return said["state"], said["message"]
            except (ValueError, KeyError, TypeError):
                pass
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            if -code == signal.SIGKILL and watchdog:
                return "CRASHED", ("The flow's process group was killed by its runner's watchdog: the runner could "
                                   "not end the run within its hard deadline (a flow holding the GIL in C code "
                                   "does this).")
            hint = " (the out-of-memory killer does this)" if -code == signal.SIGKILL else ""
            return "CRASHED", f"The flow's process was killed by {name}{hint} before it could report."
        if code in (EXIT_REPORTED, EXIT_SUPERSEDED):
            # Without the runner's marker: something in the flow ended the process (os._exit).
            return "CRASHED", (f"The flow's runner exited with code {code} without reporting the run's final state "
                               f"(did the flow call os._exit?).")
        return "CRASHED", f"The flow's process exited with code {code} before it could report."

    def cancel_kill_seconds(self, grace=None):
        """When a cancelled run's process group gets SIGKILL: not before its runner's hard deadline (the
        flow's `grace`, then the runner's stop window) and its watchdog's lag have passed, so that a
        runner able to end the run in order (kill the flow's processes, report CANCELLED, ship its last
        logs) always may; the agent kills only a runner that could not (e.g. its flow ignores SIGTERM
        with heartbeats off, so the runner never learns of the cancellation)."""
        agent = self.agent
        grace = agent.cancel_grace_seconds if grace is None else grace
        return grace + agent.runner_stop_window_seconds + WATCHDOG_LAG_SECONDS

    def cancel(self, grace):
        """The run is being cancelled: SIGTERM its process group, SIGKILL after its runner's hard
        deadline for a flow `grace` (see cancel_kill_seconds)."""
        with self.lock:
            if self.cancelled or self.exited.is_set():
                return
            self.cancelled = True
            started = self.process is not None
        if started:
            log.info("Run %s is being cancelled: ending its process (grace %g s).", self.run_id, grace)
            self._end_in_background(self.cancel_kill_seconds(grace))

    def _end_in_background(self, kill_after):
        threading.Thread(target=self._end_process, args=(kill_after,), name=f"end-{self.run_id[:8]}",
                         daemon=True).start()

    def _end_process(self, kill_after):
        """Ask the runner's process group to stop, then kill it if the runner does not exit in time."""
        self._signal_group(signal.SIGTERM)
        if not self.exited.wait(kill_after):
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum):
        # The runner leads its own process group (start_new_session): the flow's subprocesses are in it.
        with self.lock:
            if self.reaped:
                return
            try:
                os.killpg(self.process.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def end(self):
        """At shutdown: stop the flow's process group now (SIGTERM, then SIGKILL)."""
        self.abandoned = True
        if self.process and not self.exited.is_set():
            self._end_process(SHUTDOWN_KILL_SECONDS)


class Agent:
    """Polls the queues of one workspace and runs what it claims; `run()` returns its exit code after stop()."""

    def __init__(self, client, *, api_url, key, name, queues, query_seconds=10.0, heartbeat_seconds=30.0,
                 runner_heartbeat_seconds=30.0, heartbeat_mode="thread", limit=8, grace_seconds=30.0,
                 cancel_grace_seconds=30.0, runner_stop_window_seconds=DEFAULT_STOP_WINDOW_SECONDS,
                 webserver_host="127.0.0.1", webserver_port=8080, version=""):
        self.client, self.api_url, self.key = client, api_url, key
        self.name, self.queues, self.version = name, queues, version
        self.query_seconds, self.heartbeat_seconds = query_seconds, heartbeat_seconds
        self.runner_heartbeat_seconds, self.heartbeat_mode = runner_heartbeat_seconds, heartbeat_mode
        self.limit, self.grace_seconds, self.cancel_grace_seconds = limit, grace_seconds, cancel_grace_seconds
        self.runner_stop_window_seconds = runner_stop_window_seconds
        self.task_result_max_bytes = 1_048_576  # until the server says otherwise when it registers us
        self.log_batch_max_lines = None  # the server's limit, once it said it
        # The most runs one claim may ask for; servers that do not say it take their default, 200.
        self.claim_max_runs = 200
        # The server's ORCHESTRATOR_HANDBACK_DELAY_SECONDS: a runner's hand-back is over within half of it.
        self.handback_delay_seconds = DEFAULT_HANDBACK_DELAY_SECONDS
        self.next_poll_seconds = query_seconds
        self.webserver = (webserver_host, webserver_port)
        self.stopping = threading.Event()
        self.agent_id = None
        self.executions = {}
        self.failed_polls = 0
        self.last_good_poll = time.monotonic()
        self.server_away = False
        # (month, limit) of the quota refusal the log last showed; None: claims are not refused.
        self.quota_refusal = None
        self.health_server = None
        self.exit_code = 0

    def stop(self, *_signal_args):
        """Stop polling; running flows get the grace period (the SIGTERM handler)."""
        self.stopping.set()

    def health(self):
        missed = (time.monotonic() - self.last_good_poll) / max(self.query_seconds, 0.001)
        healthy = self.failed_polls < UNHEALTHY_AFTER_POLLS and missed < UNHEALTHY_AFTER_POLLS + 1
        return healthy, {"agent": self.name, "failed_polls": self.failed_polls, "running": len(self.executions)}

    def run(self):
        if self.webserver[1] is not None:
            self.health_server = start_health_server(*self.webserver, self.health)
            log.info("Healthcheck on http://%s:%s/health", *self.health_server.server_address[:2])
        if not self._register():
            return self.exit_code
        threading.Thread(target=self._heartbeat_loop, name="agent-heartbeat", daemon=True).start()
        log.info("Agent %s (id %s) polling %s every %g s", self.name, self.agent_id, ", ".join(self.queues),
                 self.query_seconds)
        while not self.stopping.is_set():
            self.poll_once()
            self.stopping.wait(self.next_poll_seconds)
        self._shutdown()
        return self.exit_code

    def _register(self):
        payload = {"name": self.name, "queues": self.queues, "version": self.version,
                   "heartbeat_interval": max(int(self.heartbeat_seconds), 1),
                   "labels": {"hostname": os.uname().nodename, "python": sys.version.split()[0]}}
        try:
            # The web server may not be up yet (make run starts both at once): wait for it.
            answer = self.client.post("register", payload, retry_for=None, stop=self.stopping)
        except ServerUnreachable:
            return False
        except ApiError as exc:
            log.error("The server refused to register this agent: %s", exc)
            self.exit_code = 2
            return False
        self.agent_id = answer["id"]
        self.task_result_max_bytes = answer.get("task_result_max_bytes", self.task_result_max_bytes)
        # An older server does not say; the shipper then assumes the default limit.
        self.log_batch_max_lines = answer.get("log_batch_max_lines")
        self.claim_max_runs = answer.get("claim_max_runs") or self.claim_max_runs
        self.handback_delay_seconds = answer.get("handback_delay_seconds", self.handback_delay_seconds)
        return True

    def poll_once(self):
        """Claim what fits under the limit and start it, stop what is being cancelled; returns how
        many runs were started."""
        self.executions = {k: e for k, e in self.executions.items() if e.thread.is_alive()}
        room = self.limit - len(self.executions)
        self.next_poll_seconds = self.query_seconds
        try:
            if room > 0:
                # A claim for more than the server hands out at once is refused whole: ask for what it allows.
                answer = self.client.post("claim", {"agent_id": self.agent_id,
                                                    "max_runs": min(room, self.claim_max_runs)})
            else:
                answer = self.client.post("heartbeat", {"agent_id": self.agent_id})
        except (ApiError, ServerUnreachable) as exc:
            self.failed_polls += 1
            if exc.retry_after:  # the server asked for a pause (429/503 with Retry-After)
                self.next_poll_seconds = max(self.query_seconds, exc.retry_after)
            if not self.server_away:
                log.warning("Poll failed: %s; retrying every %g s", exc, self.next_poll_seconds)
            self.server_away = True
            return 0
        if self.server_away:
            log.info("The server is reachable again after %d failed poll(s).", self.failed_polls)
            self.server_away = False
        self.failed_polls = 0
        self.last_good_poll = time.monotonic()
        answer = answer or {}
        if room > 0:
            self._note_quota(answer.get("quota"))
        self._cancel(answer.get("cancelling") or [])
        started = 0
        for run in answer.get("runs") or []:
            if run["id"] in self.executions:
                continue  # claimed before and already running here: the claim hands it out until it starts
            log.info("Claimed run %s (%s) of flow %s", run["id"], run["name"], run["flow"])
            execution = Execution(self, run)
            self.executions[run["id"]] = execution
            execution.start()
            started += 1
        return started

    def _note_quota(self, refusal):
        """Log the server's quota refusal once, not at every poll: again only when the month or the limit
        changes, and once when claims are allowed again. Polling goes on meanwhile either way."""
        key = (refusal.get("month"), refusal.get("limit")) if refusal else None
        if key == self.quota_refusal:
            return
        if refusal:
            log.warning("No new runs are claimed: %s (Still polling every %g s.)",
                        refusal.get("message") or "the workspace's monthly task-run quota is used up.",
                        self.query_seconds)
        else:
            log.info("The workspace's monthly task-run quota allows claims again.")
        self.quota_refusal = key

    def _cancel(self, run_ids):
        for run_id in run_ids:
            execution = self.executions.get(run_id)
            if execution is not None:
                execution.cancel(self.cancel_grace_seconds)

    def _heartbeat_loop(self):
        while not self.stopping.wait(self.heartbeat_seconds):
            try:
                answer = self.client.post("heartbeat", {"agent_id": self.agent_id})
            except (ApiError, ServerUnreachable) as exc:
                log.debug("Agent heartbeat failed: %s", exc)
                continue
            self._cancel((answer or {}).get("cancelling") or [])

    def _shutdown(self):
        running = [e for e in self.executions.values() if e.thread.is_alive()]
        log.info("Stopping: %d run(s) still running, waiting up to %g s", len(running), self.grace_seconds)
        deadline = time.monotonic() + self.grace_seconds
        for execution in running:
            execution.thread.join(timeout=max(deadline - time.monotonic(), 0))
        unfinished = [e for e in running if e.thread.is_alive()]
        for execution in unfinished:
            execution.end()
        for execution in unfinished:
            execution.thread.join(timeout=REPORT_RETRY_SECONDS)
        try:
            self.client.post("heartbeat", {"agent_id": self.agent_id, "status": "OFFLINE"}, retry_for=10)
        except (ApiError, ServerUnreachable) as exc:
            log.warning("Could not report the agent OFFLINE: %s", exc)
        if self.health_server:
            self.health_server.shutdown()
        log.info("Agent %s stopped (%d run(s) reported CRASHED).", self.name, len(unfinished))
