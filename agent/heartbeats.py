"""Heartbeats of a flow run and its running task runs, sent from a thread, a process, or not at all.

`thread` is cheapest; `process` keeps beating even while user code holds the GIL in a long C
call (and stops when the run's process dies, which is the point of a heartbeat); `off` sends
none, and the run is registered with no heartbeat interval so the Zombie Killer judges it only by
its start time.

A flow run's heartbeat answers with the run's state: when it says the run is being cancelled,
the sender tells the runner, `on_stop(state)`. A heartbeat refused as `superseded` (another
attempt has the run) is told as state SUPERSEDED. The heartbeat process tells it through a pipe
that a thread of the runner reads, not through a signal: a signal would wake the flow's main
thread, and one that lands as it goes back to sleep is not seen until it wakes again.

A heartbeat process that dies while its runner lives (killed by the OOM killer, or by hand) is
replaced by beats from a thread of the runner: its flow is alive, and without beats the Zombie
Killer would in time mark the live run CRASHED.
"""

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time

from .client import ApiClient, ApiError

logger = logging.getLogger(__name__)

MODES = ("thread", "process", "off")
# States in a flow run heartbeat's answer that mean "stop the flow".
STOP_STATES = ("CANCELLING", "CANCELLED")
# What `on_stop` is told when the run's heartbeat is refused because another attempt has the run.
SUPERSEDED = "SUPERSEDED"


def _beat(client, targets, on_stop=None):
    for kind, target_id in targets:
        try:
            answer = client.post(f"{kind}/{target_id}/heartbeat")
        except ApiError as exc:
            if exc.superseded and on_stop is not None:
                on_stop(SUPERSEDED)
            continue
        except Exception:  # noqa: BLE001 - a lost beat is retried by the next one
            continue
        state = answer.get("state") if kind == "flow_runs" and isinstance(answer, dict) else None
        if state in STOP_STATES and on_stop is not None:
            on_stop(state)


class ThreadHeartbeats:
    """Beats every `interval` seconds from a daemon thread of this process."""

    def __init__(self, client, interval, on_stop=None):
        self.client, self.interval, self.on_stop = client, interval, on_stop
        self.targets = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeats", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def track(self, kind, target_id):
        with self.lock:
            self.targets.add((kind, target_id))

    def untrack(self, kind, target_id):
        with self.lock:
            self.targets.discard((kind, target_id))

    def stop(self):
        self.stopped.set()

    def _loop(self):
        while not self.stopped.wait(self.interval):
            with self.lock:
                targets = list(self.targets)
            _beat(self.client, targets, self.on_stop)


def _process_loop(base_url, key, interval, commands, parent_pid, told_fd, runners_end):
    # Forked from the runner: its handlers (which raise into the flow) are not this process's.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.close(runners_end)  # the runner's end of the pipe: with it gone, writing to a gone runner fails
    client = ApiClient(base_url, key)
    targets = set()
    told = []

    def tell_parent(state):
        if state not in told:
            told.append(state)
            try:
                os.write(told_fd, state.encode() + b"\n")
            except OSError:  # the runner is gone; the loop ends at its next check
                pass

    while os.getppid() == parent_pid:
        next_beat = time.monotonic() + interval
        while (left := next_beat - time.monotonic()) > 0:
            try:  # between beats, keep up with tracked / untracked targets
                command, kind, target_id = commands.get(timeout=left)
            except queue.Empty:
                break
            if command == "stop":
                return
            (targets.add if command == "add" else targets.discard)((kind, target_id))
        _beat(client, list(targets), tell_parent)


class ProcessHeartbeats:
    """Beats from a separate process that exits when this one does. What its beats tell (the run is
    being cancelled, or another attempt has it) comes back through a pipe, one state a line; a
    thread of this process reads it and calls `on_stop(state)`. When the pipe ends though this
    sender was not stopped, the process died: a thread of this process beats instead (`fallback`),
    at once and then every `interval`, for what is tracked."""

    def __init__(self, interval, *, base_url, key, on_stop=None):
        context = multiprocessing.get_context("fork")
        self.interval, self.base_url, self.key, self.on_stop = interval, base_url, key, on_stop
        self.commands = context.Queue()
        self.told_read, self.told_write = os.pipe()
        self.process = context.Process(
            target=_process_loop,
            args=(base_url, key, interval, self.commands, os.getpid(), self.told_write, self.told_read),
            name="heartbeats", daemon=True,
        )
        self.lock = threading.Lock()
        self.targets = set()  # what is tracked, for a fallback to take over
        self.stopping = False
        self.fallback = None
        # One join at a time: two threads reaping the process at once may leave it "alive" for ever
        # to the one whose waitpid found it reaped already (multiprocessing's poll then says None).
        self.reaping = threading.Lock()

    def start(self):
        self.process.start()
        # The heartbeat process holds the only write end now: when it ends, the reader sees the end.
        os.close(self.told_write)
        threading.Thread(target=self._relay, name="heartbeat-answers", daemon=True).start()
        return self

    def _relay(self):
        with os.fdopen(self.told_read, "rb", buffering=0) as told:
            for line in told:
                state = line.decode().strip()
                if state and self.on_stop is not None:
                    self.on_stop(state)
        with self.reaping:
            self.process.join(timeout=5)  # the pipe's end: the process is gone, or going
        with self.lock:
            if self.stopping:
                return
            logger.warning("The heartbeat process ended (exit code %s) while its run goes on: beating from a "
                           "thread of the runner instead.", self.process.exitcode)
            self.fallback = ThreadHeartbeats(ApiClient(self.base_url, self.key), self.interval, self.on_stop)
            targets = list(self.targets)
            for target in targets:
                self.fallback.track(*target)
        _beat(self.fallback.client, targets, self.on_stop)  # the last beat may be an interval old
        self.fallback.start()

    def track(self, kind, target_id):
        with self.lock:
            self.targets.add((kind, target_id))
            if self.fallback is not None:
                self.fallback.track(kind, target_id)
                return
        self.commands.put(("add", kind, target_id))

    def untrack(self, kind, target_id):
        with self.lock:
            self.targets.discard((kind, target_id))
            if self.fallback is not None:
                self.fallback.untrack(kind, target_id)
                return
        self.commands.put(("remove", kind, target_id))

    def stop(self):
        with self.lock:
            self.stopping = True
            if self.fallback is not None:
                self.fallback.stop()
                return
        self.commands.put(("stop", None, None))
        with self.reaping:
            self.process.join(timeout=5)


class NoHeartbeats:
    """Mode `off`."""

    def start(self):
        return self

    def track(self, kind, target_id):
        pass

    def untrack(self, kind, target_id):
        pass

    def stop(self):
        pass


def start_heartbeats(mode, client, interval, *, base_url, key, on_stop=None):
    """Start the heartbeat sender of `mode`; returns an object with track/untrack/stop.

    `on_stop(state)` is called, from a thread of this process, when a flow run's heartbeat answers
    CANCELLING or CANCELLED, or is refused as superseded (SUPERSEDED).
    """
    if mode == "off" or not interval:
        return NoHeartbeats().start()
    if mode == "process":
        return ProcessHeartbeats(interval, base_url=base_url, key=key, on_stop=on_stop).start()
    return ThreadHeartbeats(client, interval, on_stop).start()
