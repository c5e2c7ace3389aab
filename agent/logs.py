"""Ships run log lines to the server in batches, from a bounded buffer that survives outages.

The server judges each line on its own: it stores the good ones and says which it refused and
why, so one bad line never costs its batch; a batch it finds too large (413) is split in halves.
"""

import json
import collections
import logging
import threading
import time
from datetime import datetime, timezone

log = logging.getLogger("agent.logs")

MAX_MESSAGE_CHARS = 10_000
BATCH_LINES = 500
BATCH_BYTES = 256 * 1024  # well under the server's default 1 MiB limit per request
# The most lines the server takes in one batch (its ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES) when it
# does not say: the register answer tells it, servers older than that answer take this many.
SERVER_BATCH_MAX_LINES = 1000
# The levels the server stores; Python's custom levels (e.g. 25) are sent as the nearest one below.
SERVER_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def storable(text):
    """`text` as the server can store it: a NUL character (PostgreSQL text cannot hold one) becomes
    U+FFFD, a lone surrogate (not UTF-8, e.g. from an undecodable file name) "?". The server refuses
    a whole request holding either, so one such line would cost its batch, one such message its report."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def server_level(levelno):
    """The server's level for a Python logging level number."""
    return max((level for level in SERVER_LEVELS if level <= levelno), default=logging.DEBUG)


def redact(text, values):
    """`text` with each of `values` (a run's secrets) replaced by ***, longest first."""
    if not text or not values:
        return text
    for value in values:
        text = text.replace(value, "***")
    return text


def redaction_list(values):
    """What to redact for these secret values, longest first (one that contains another is not left
    half shown): each value as it is and stripped, as JSON and Python's repr escape it (a result or a
    logged repr), and each line of eight characters or more of a multi-line value (printed output
    is shipped line by line)."""
    forms = set()
    for value in values:
        if not value:
            continue
        forms.update((value, value.strip(), json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1],
                      repr(value)[1:-1]))
        forms.update(line.strip() for line in value.splitlines() if len(line.strip()) >= 8)
    return sorted((form for form in forms if form), key=len, reverse=True)


class LogShipper:
    """Collects lines and posts them every `interval` seconds.

    The buffer holds at most `capacity` lines: when the server is away longer than that lasts,
    the oldest lines are dropped and a line saying how many is sent once it is back.

    A `journal` (optional) is told each line as it is added (`added(line)`, the line has a `seq`)
    and, after each batch the server took, the highest `seq` done (`delivered(seq)`).
    """

    def __init__(self, client, *, interval=1.0, capacity=10_000, journal=None, server_max_lines=None,
                 redactions=()):
        self.client = client
        self.redactions = redaction_list(redactions)  # the run's secrets: never shipped, never journalled
        self.interval = interval
        self.batch_lines = BATCH_LINES
        self.limit_lines(server_max_lines)
        self.buffer = collections.deque(maxlen=capacity)
        self.lock = threading.Lock()
        self.dropped = {}
        self.journal = journal
        self.seq = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="log-shipper", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def limit_lines(self, server_max_lines):
        """Never send more lines per batch than the server takes (None: it did not say, assume its default).

        A batch over the server's limit is refused whole (400), and refused lines are not sent again.
        """
        try:
            most = int(server_max_lines) if server_max_lines is not None else SERVER_BATCH_MAX_LINES
        except (TypeError, ValueError):
            most = SERVER_BATCH_MAX_LINES
        self.batch_lines = max(min(BATCH_LINES, most), 1)

    def add(self, flow_run_id, message, *, level=logging.INFO, task_run_id=None, timestamp=None):
        line = {"flow_run_id": flow_run_id, "task_run_id": task_run_id, "level": server_level(level),
                "message": storable(redact(message, self.redactions)[:MAX_MESSAGE_CHARS]),
                "timestamp": timestamp or datetime.now(timezone.utc).isoformat()}
        with self.lock:
            if len(self.buffer) == self.buffer.maxlen:
                oldest = self.buffer[0]["flow_run_id"]
                self.dropped[oldest] = self.dropped.get(oldest, 0) + 1
            self.seq += 1
            line["seq"] = self.seq
            self.buffer.append(line)
            if self.journal is not None:
                self.journal.added(line)

    def flush(self):
        """Send everything buffered; returns False when the server could not take it."""
        while True:
            with self.lock:
                # A note per run that lost lines, then lines: `batch_lines` in all.
                counts = list(self.dropped.items())
                dropped, self.dropped = dict(counts[:self.batch_lines]), dict(counts[self.batch_lines:])
                notes = {run_id: {"flow_run_id": run_id, "task_run_id": None, "level": logging.WARNING,
                                  "message": f"The agent dropped {count} log line(s) of this run while the server "
                                             f"was away.", "timestamp": datetime.now(timezone.utc).isoformat()}
                         for run_id, count in dropped.items()}
                lines, size = [], 0
                while self.buffer and len(notes) + len(lines) < self.batch_lines and size < BATCH_BYTES:
                    line = self.buffer.popleft()
                    size += len(line["message"]) + 200
                    lines.append(line)
            if not lines and not notes:
                return True
            unsent = {id(line) for line in self._send([*notes.values(), *lines])}
            if unsent:  # server away: put them back, try again later
                self._put_back([line for line in lines if id(line) in unsent],
                               {run_id: dropped[run_id] for run_id, note in notes.items() if id(note) in unsent})
                return False
            if self.journal is not None and lines:
                self.journal.delivered(lines[-1]["seq"])

    def drain(self, timeout):
        """Flush until everything is sent or `timeout` seconds passed; returns whether it all went."""
        deadline = time.monotonic() + timeout
        while not self.flush():
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
        return True

    def _send(self, lines):
        """Post `lines`; returns those not sent because the server is away (refused ones are not kept)."""
        # Here, not at the top: the server imports this module for redaction and has no use for the
        # HTTP client (`requests`, ~18 MiB); self.client has loaded it by now.
        from .client import ApiError

        try:
            answer = self.client.post("logs", {"logs": [{k: v for k, v in line.items() if k != "seq"}
                                                        for line in lines]})
        except ApiError as exc:
            if exc.status == 413 and len(lines) > 1:
                half = len(lines) // 2
                unsent = self._send(lines[:half])
                return unsent + lines[half:] if unsent else self._send(lines[half:])
            # Refused for good (e.g. the run was deleted): keeping them would block the rest.
            log.warning("The server refused %d log line(s): %s", len(lines), exc)
            return []
        except Exception:  # noqa: BLE001 - server away
            return lines
        for refusal in (answer or {}).get("refused") or []:
            index = refusal.get("index")
            line = lines[index] if isinstance(index, int) and 0 <= index < len(lines) else {}
            log.warning("The server refused a log line of run %s (%s): %.200s", line.get("flow_run_id"),
                        refusal.get("reason"), line.get("message", ""))
        return []

    def _put_back(self, lines, dropped):
        with self.lock:
            for run_id, count in dropped.items():
                self.dropped[run_id] = self.dropped.get(run_id, 0) + count
            room = self.buffer.maxlen - len(self.buffer)
            lost, kept = lines[: max(len(lines) - room, 0)], lines[max(len(lines) - room, 0):]
            for line in lost:  # newer lines arrived meanwhile; the oldest give way
                self.dropped[line["flow_run_id"]] = self.dropped.get(line["flow_run_id"], 0) + 1
            self.buffer.extendleft(reversed(kept))

    def stop(self, drain_seconds=0.0):
        """Stop the shipping thread and send what is left (trying for up to `drain_seconds`)."""
        self.stopped.set()
        self.thread.join(timeout=10)
        return self.drain(drain_seconds)

    def _loop(self):
        while not self.stopped.wait(self.interval):
            self.flush()
