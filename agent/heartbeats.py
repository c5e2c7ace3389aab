"""Heartbeats of a flow run and its running task runs, sent from a thread, a process, or not at all.

`thread` is cheapest; `process` keeps beating even while user code holds the GIL in a long C
call (and stops when the run's process dies, which is the point of a heartbeat); `off` sends
none, and the run is registered with no heartbeat interval so the Zombie Killer judges it only by
its start time.
"""

import multiprocessing
import os
import queue
import threading
import time

from .client import ApiClient

MODES = ("thread", "process", "off")


def _beat(client, targets):
    for kind, target_id in targets:
        try:
            client.post(f"{kind}/{target_id}/heartbeat")
        except Exception:  # noqa: BLE001 - a lost beat is retried by the next one
            pass


class ThreadHeartbeats:
    """Beats every `interval` seconds from a daemon thread of this process."""

    def __init__(self, client, interval):
        self.client, self.interval = client, interval
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
            _beat(self.client, targets)


def _process_loop(base_url, key, interval, commands, parent_pid):
    client = ApiClient(base_url, key)
    targets = set()
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
        _beat(client, list(targets))


class ProcessHeartbeats:
    """Beats from a separate process that exits when this one does."""

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


def start_heartbeats(mode, client, interval, *, base_url, key):
    """Start the heartbeat sender of `mode`; returns an object with track/untrack/stop."""
    if mode == "off" or not interval:
        return NoHeartbeats().start()
    if mode == "process":
        return ProcessHeartbeats(client, interval, base_url=base_url, key=key).start()
    return ThreadHeartbeats(client, interval).start()
