"""The agent's main loop: register, poll and claim, run each claimed flow in a subprocess, report.

Threads: the poll loop (main), one per running flow (starts the subprocess, forwards its output
to the log shipper, reports the final state from the exit code), the agent's own heartbeat, the
log shipper and the healthcheck server.
"""

import json
import logging
import os
import subprocess
import sys
import threading
import time

from .client import ApiError, ServerUnreachable
from .health import start_health_server
from .logs import LogShipper
from .runner import LOG_MARKER

log = logging.getLogger("agent")

# Consecutive failed (or missed) polls after which /health answers 503.
UNHEALTHY_AFTER_POLLS = 3
# State reports are retried this long while the server is away.
REPORT_RETRY_SECONDS = 600


class Execution:
    """One claimed flow run in its subprocess."""

    def __init__(self, agent, run):
        self.agent = agent
        self.run = run
        self.run_id = run["id"]
        self.process = None
        self.abandoned = False  # set at shutdown: the agent gave up waiting for it
        self.thread = threading.Thread(target=self._execute, name=f"run-{self.run_id[:8]}", daemon=True)

    def start(self):
        self.thread.start()

    def _report(self, state, message="", **extra):
        try:
            self.agent.client.post(f"flow_runs/{self.run_id}/state", {"state": state, "message": message, **extra},
                                   retry_for=REPORT_RETRY_SECONDS)
            return True
        except (ApiError, ServerUnreachable) as exc:
            log.warning("Run %s: could not report %s: %s", self.run_id, state, exc)
            return False

    def _execute(self):
        agent = self.agent
        interval = agent.runner_heartbeat_seconds if agent.heartbeat_mode != "off" else None
        # The server keeps whole seconds; the beats themselves may come faster.
        declared = max(round(interval), 1) if interval else None
        if not self._report("RUNNING", f"Started by agent {agent.name}.", heartbeat_interval=declared):
            return
        if not self.run.get("entrypoint"):
            self._report("FAILED", "The flow has no version with an entrypoint to run.")
            return
        env = {**os.environ, **self.run.get("env", {}),
               "ORCHESTRATOR_FLOW_RUN_ID": self.run_id, "ORCHESTRATOR_ENTRYPOINT": self.run["entrypoint"],
               "ORCHESTRATOR_PARAMETERS": json.dumps(self.run.get("parameters") or {}),
               "ORCHESTRATOR_API_URL": agent.api_url, "ORCHESTRATOR_API_KEY": agent.key,
               "ORCHESTRATOR_HEARTBEAT_MODE": agent.heartbeat_mode,
               "ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS": str(interval or 0), "PYTHONUNBUFFERED": "1"}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent.runner"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, errors="replace", start_new_session=True,
            )
        except OSError as exc:
            self._report("CRASHED", f"Could not start the flow's process: {exc}")
            return
        readers = [threading.Thread(target=self._forward, args=(self.process.stdout, logging.INFO), daemon=True),
                   threading.Thread(target=self._forward, args=(self.process.stderr, logging.ERROR), daemon=True)]
        for reader in readers:
            reader.start()
        code = self.process.wait()
        for reader in readers:
            reader.join(timeout=5)
        # A finished run has its logs: send them before the final state.
        agent.shipper.flush()
        if self.abandoned:
            self._report("CRASHED", f"Agent {agent.name} stopped before the run finished "
                                    f"(grace period {agent.grace_seconds:g} s); the flow's process was ended.")
        elif code == 0:
            self._report("COMPLETED", "The flow's process exited with code 0.")
        else:
            self._report("FAILED", f"The flow's process exited with code {code}.")

    def _forward(self, stream, level):
        shipper = self.agent.shipper
        for raw in stream:
            line = raw.rstrip("\n")
            if line.startswith(LOG_MARKER):
                try:
                    record = json.loads(line[len(LOG_MARKER):])
                    shipper.add(self.run_id, record["message"], level=int(record["level"]),
                                task_run_id=record.get("task_run_id"))
                    continue
                except (ValueError, KeyError):
                    pass
            if line:
                shipper.add(self.run_id, line, level=level)

    def end(self):
        """Ask the flow's process group to stop, then kill it if it does not."""
        self.abandoned = True
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 15)
                self.process.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, 9)
                except ProcessLookupError:
                    pass


class Agent:
    """Polls the queues of one workspace and runs what it claims; `run()` returns its exit code after stop()."""

    def __init__(self, client, *, api_url, key, name, queues, query_seconds=10.0, heartbeat_seconds=30.0,
                 runner_heartbeat_seconds=30.0, heartbeat_mode="thread", limit=8, grace_seconds=30.0,
                 webserver_host="127.0.0.1", webserver_port=8080, version=""):
        self.client, self.api_url, self.key = client, api_url, key
        self.name, self.queues, self.version = name, queues, version
        self.query_seconds, self.heartbeat_seconds = query_seconds, heartbeat_seconds
        self.runner_heartbeat_seconds, self.heartbeat_mode = runner_heartbeat_seconds, heartbeat_mode
        self.limit, self.grace_seconds = limit, grace_seconds
        self.webserver = (webserver_host, webserver_port)
        self.stopping = threading.Event()
        self.agent_id = None
        self.executions = {}
        self.failed_polls = 0
        self.last_good_poll = time.monotonic()
        self.server_away = False
        self.shipper = LogShipper(client)
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
        self.shipper.start()
        if not self._register():
            return self.exit_code
        threading.Thread(target=self._heartbeat_loop, name="agent-heartbeat", daemon=True).start()
        log.info("Agent %s (id %s) polling %s every %g s", self.name, self.agent_id, ", ".join(self.queues),
                 self.query_seconds)
        while not self.stopping.is_set():
            self.poll_once()
            self.stopping.wait(self.query_seconds)
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
        return True

    def poll_once(self):
        """Claim what fits under the limit and start it; returns how many runs were claimed."""
        self.executions = {k: e for k, e in self.executions.items() if e.thread.is_alive()}
        room = self.limit - len(self.executions)
        try:
            if room > 0:
                runs = self.client.post("claim", {"agent_id": self.agent_id, "max_runs": room})["runs"]
            else:
                runs = []
                self.client.post("heartbeat", {"agent_id": self.agent_id})
        except (ApiError, ServerUnreachable) as exc:
            self.failed_polls += 1
            if not self.server_away:
                log.warning("Poll failed: %s; retrying every %g s", exc, self.query_seconds)
            self.server_away = True
            return 0
        if self.server_away:
            log.info("The server is reachable again after %d failed poll(s).", self.failed_polls)
            self.server_away = False
        self.failed_polls = 0
        self.last_good_poll = time.monotonic()
        for run in runs:
            log.info("Claimed run %s (%s) of flow %s", run["id"], run["name"], run["flow"])
            execution = Execution(self, run)
            self.executions[run["id"]] = execution
            execution.start()
        return len(runs)

    def _heartbeat_loop(self):
        while not self.stopping.wait(self.heartbeat_seconds):
            try:
                self.client.post("heartbeat", {"agent_id": self.agent_id})
            except (ApiError, ServerUnreachable) as exc:
                log.debug("Agent heartbeat failed: %s", exc)

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
        self.shipper.stop()
        try:
            self.client.post("heartbeat", {"agent_id": self.agent_id, "status": "OFFLINE"}, retry_for=10)
        except (ApiError, ServerUnreachable) as exc:
            log.warning("Could not report the agent OFFLINE: %s", exc)
        if self.health_server:
            self.health_server.shutdown()
        log.info("Agent %s stopped (%d run(s) reported CRASHED).", self.name, len(unfinished))
