"""Ships run log lines to the server in batches, from a bounded buffer that survives outages."""

import collections
import logging
import threading
from datetime import datetime, timezone

from .client import ApiError

log = logging.getLogger("agent.logs")

MAX_MESSAGE_CHARS = 10_000
BATCH_LINES = 500
BATCH_BYTES = 256 * 1024  # well under the server's default 1 MiB limit per request


class LogShipper:
    """Collects lines and posts them every `interval` seconds.

    The buffer holds at most `capacity` lines: when the server is away longer than that lasts,
    the oldest lines are dropped and a line saying how many is sent once it is back.
    """

    def __init__(self, client, *, interval=1.0, capacity=10_000):
        self.client = client
        self.interval = interval
        self.buffer = collections.deque(maxlen=capacity)
        self.lock = threading.Lock()
        self.dropped = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="log-shipper", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def add(self, flow_run_id, message, *, level=logging.INFO, task_run_id=None):
        line = {"flow_run_id": flow_run_id, "task_run_id": task_run_id, "level": level,
                "message": message[:MAX_MESSAGE_CHARS], "timestamp": datetime.now(timezone.utc).isoformat()}
        with self.lock:
            if len(self.buffer) == self.buffer.maxlen:
                oldest = self.buffer[0]["flow_run_id"]
                self.dropped[oldest] = self.dropped.get(oldest, 0) + 1
            self.buffer.append(line)

    def flush(self):
        """Send everything buffered; returns False when the server could not take it."""
        while True:
            with self.lock:
                dropped, self.dropped = self.dropped, {}
                notes = [{"flow_run_id": run_id, "task_run_id": None, "level": logging.WARNING,
                          "message": f"The agent dropped {count} log line(s) of this run while the server was away.",
                          "timestamp": datetime.now(timezone.utc).isoformat()} for run_id, count in dropped.items()]
                lines, size = [], 0
                while self.buffer and len(lines) < BATCH_LINES and size < BATCH_BYTES:
                    line = self.buffer.popleft()
                    size += len(line["message"]) + 200
                    lines.append(line)
            if not lines and not notes:
                return True
            try:
                self.client.post("logs", {"logs": notes + lines})
            except ApiError as exc:
                # Refused for good (e.g. the run was deleted): keeping it would block the rest.
                log.warning("The server refused %d log line(s): %s", len(notes) + len(lines), exc)
            except Exception:  # noqa: BLE001 - server away: put the batch back, try again later
                self._put_back(lines, dropped)
                return False

    def _put_back(self, lines, dropped):
        with self.lock:
            for run_id, count in dropped.items():
                self.dropped[run_id] = self.dropped.get(run_id, 0) + count
            room = self.buffer.maxlen - len(self.buffer)
            lost, kept = lines[: max(len(lines) - room, 0)], lines[max(len(lines) - room, 0):]
            for line in lost:  # newer lines arrived meanwhile; the oldest give way
                self.dropped[line["flow_run_id"]] = self.dropped.get(line["flow_run_id"], 0) + 1
            self.buffer.extendleft(reversed(kept))

    def stop(self):
        self.stopped.set()
        self.thread.join(timeout=10)
        self.flush()

    def _loop(self):
        while not self.stopped.wait(self.interval):
            self.flush()
