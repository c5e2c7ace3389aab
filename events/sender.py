"""Hands committed events to the buffer from a background thread, so that a change never waits on Redis.

A Redis round trip after every commit cost a state change about one more round trip on top of its
~8 database ones: 10-20 % of a transition on a loaded machine (bench/events.py). Instead, `send`
queues the events in memory and returns; one daemon thread per process takes whatever is queued
within LINGER_SECONDS (up to BATCH events) and adds it to the stream in one command (events/buffer.py, which falls back to the
PendingEvent table when Redis cannot take them, and skips Redis for a while after it failed).
Prefect's client sends its events the same way (a background events worker).

What this costs: events of a process killed with SIGKILL (or ended with os._exit, as pool
workers may be) within LINGER_SECONDS of their commit are lost; a normal exit sends what is
queued first, up to EXIT_WAIT_SECONDS. The synchronous path had the same gap, one round trip
wide. A full queue (Redis slower than the changes for a long while) sends in the caller instead:
back-pressure, never a drop.
"""

import atexit
import logging
import os
import queue
import threading
import time

logger = logging.getLogger(__name__)

BATCH = 1000  # events per command
# How long the thread lets more commits join a batch before sending it (seconds). The persister
# reads every second, so 50 ms more costs nothing downstream, and one command for many commits
# costs the process a fraction of the CPU that one per commit does. `wait` cuts it short.
LINGER_SECONDS = 0.05
QUEUE_BATCHES = 10_000  # batches (one per commit) waiting at most, then callers send themselves
EXIT_WAIT_SECONDS = 5.0


class Sender:
    def __init__(self):
        self._lock = threading.Lock()
        self._pid = None
        self._queue = None
        self._flush = threading.Event()

    def _started(self):
        """The queue of this process, its thread started (again after a fork: threads do not survive one)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._queue = queue.Queue(maxsize=QUEUE_BATCHES)
                    threading.Thread(target=self._run, args=(self._queue,), name="events-sender", daemon=True).start()
                    self._pid = os.getpid()
        return self._queue

    def send(self, events):
        """Queue `events` for the buffer; sends them at once in the caller when the queue is full."""
        try:
            self._started().put_nowait(events)
        except queue.Full:
            from events import buffer

            buffer.push(events)

    def _run(self, waiting):
        from django.db import connections

        from events import buffer
        from events.emit import decoded

        while True:
            events = list(waiting.get())
            taken = 1
            self._flush.wait(LINGER_SECONDS)
            self._flush.clear()
            while len(events) < BATCH:
                try:
                    events.extend(waiting.get_nowait())
                except queue.Empty:
                    break
                taken += 1
            try:
                if buffer.push(events) == "table":
                    connections.close_all()  # the fallback is rare: hold no connection between them
            except Exception:
                logger.exception("Could not buffer %d events (first: %s); they are lost.", len(events),
                                 decoded(events[0]).get("name"))
            finally:
                for _ in range(taken):
                    waiting.task_done()

    def wait(self, timeout=10.0):
        """Block until everything queued so far was handed to the buffer; False on timeout."""
        waiting = self._queue
        if waiting is None or self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        self._flush.set()
        with waiting.all_tasks_done:
            while waiting.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                waiting.all_tasks_done.wait(remaining)
        return True


    def _after_fork_in_child(self):
        """A forked child has only the forking thread: the parent's sender thread is gone, and a
        lock another thread held at the fork stays held for ever. New locks, a new queue on the
        first send (the parent sends what it had queued)."""
        self._lock = threading.Lock()
        self._flush = threading.Event()
        self._pid = None
        self._queue = None


sender = Sender()
os.register_at_fork(after_in_child=sender._after_fork_in_child)


@atexit.register
def _send_before_exit():
    if not sender.wait(EXIT_WAIT_SECONDS):
        logger.error("Events still queued at exit after %ss were not buffered.", EXIT_WAIT_SECONDS)
