"""Heartbeats of a flow run and its running task runs, sent from a thread, a process, or not at all.

`thread` is cheapest; `process` keeps beating even while user code holds the GIL in a long C
call (and stops when the run's process dies, which is the point of a heartbeat); `off` sends
none, and the run is registered with no heartbeat interval so the Zombie Killer judges it only by
its start time.

A flow run's heartbeat answers with the run's state: when it says the run is being cancelled,
the sender tells the runner (`on_stop(state)` from the thread; SIGUSR1 from the process). A
heartbeat refused as `superseded` (another attempt has the run) is told as state SUPERSEDED
(SIGUSR2 from the process).
"""

import multiprocessing
import os
import queue
import signal
import threading
import time

from .client import ApiClient, ApiError

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


def _process_loop(base_url, key, interval, commands, parent_pid):
    # Forked from the runner: its handlers (which raise into the flow) are not this process's.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    client = ApiClient(base_url, key)
    targets = set()
    told = []

    def tell_parent(state):
        if state not in told:
            told.append(state)
            os.kill(parent_pid, signal.SIGUSR2 if state == SUPERSEDED else signal.SIGUSR1)

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
    """Beats from a separate process that exits when this one does; it sends this process SIGUSR1
    when the flow run's heartbeat answers that the run is being cancelled, SIGUSR2 when the
    heartbeat is refused because another attempt has the run."""

    def __init__(self, client, interval, *, base_url, key):
        context = multiprocessing.get_context("fork")
        self.commands = context.Queue()
        self.process = context.Process(
            target=_process_loop, args=(base_url, key, interval, self.commands, os.getpid()),
            name="heartbeats", daemon=True,
        )

    def start(self):
        self.process.start()
        return self

    def track(self, kind, target_id):
        self.commands.put(("add", kind, target_id))

    def untrack(self, kind, target_id):
        self.commands.put(("remove", kind, target_id))

    def stop(self):
        self.commands.put(("stop", None, None))
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

    `on_stop(state)` is called (mode thread) when a flow run's heartbeat answers CANCELLING or
    CANCELLED, or is refused as superseded (SUPERSEDED); in mode process, this process gets
    SIGUSR1 (SIGUSR2 for SUPERSEDED) instead.
    """
    if mode == "off" or not interval:
        return NoHeartbeats().start()
    if mode == "process":
        return ProcessHeartbeats(client, interval, base_url=base_url, key=key).start()
    return ThreadHeartbeats(client, interval, on_stop).start()
