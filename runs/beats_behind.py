"""Flow-run heartbeats written behind, answered from each web process's view of its runs (issue 16).

A beat moves its run's last heartbeat and answers with the run's state (CANCELLING: stop). Done in
the request, that is a database round trip per beat, and the round trip was most of a beat's CPU
in the web process. Instead, on PostgreSQL, each process keeps a view of the runs it has heard
beat lately (state, attempt, workspace, and the ids a beat's event names), and a beat of a viewed
run is answered from it and noted in memory. One thread per process (`BeatsBehind._run`):
- every HEARTBEAT_WRITE_BEHIND_SECONDS (default 1) writes the beats noted since in one statement
  (runs/hot_sql.py `write_beats`), whatever their number;
- listens on `orchestrator_flow_run_changed`, where PostgreSQL announces every change of a run's
  state or attempt, and every deletion, as it commits (triggers, migration 0020): the view forgets
  such a run at once, and its next beat reads it again. The view is as fresh as the announcements,
  milliseconds behind the database, and costs nothing while no run changes.

What it costs, and why that is safe:
- A beat reaches the database up to one interval (plus the statement) later, and a process killed
  with SIGKILL loses the beats of its last interval: a run's last heartbeat may stand one beat
  earlier. The recovery services give a verdict only after HEARTBEAT_MISSED_BEATS missed beats and
  minutes (Zombie Killer, Lazarus); the settings refuse an interval over 10 s. A normal exit writes
  what is pending first (atexit, up to EXIT_WAIT_SECONDS).
- A run is answered from the view only while the thread listens without a break since the view
  read it (a connection lost: the view starts empty again), and while its writes succeed (a write
  failing for MAX_AGE_INTERVALS intervals: every beat goes to the database again, which answers or
  fails as the API does).
- Whatever the view cannot answer as the database would takes the synchronous path
  (`hot_sql.beat_flow_run`): a run it does not know (its first beats here), a token of another
  attempt or workspace (superseded, 404), a beat inside a transaction (it belongs to that
  transaction, as in the tests), and SQLite (one process: nothing to save). A synchronous beat's
  answer enters the view, unless the run was announced changed after that read was sent.
- Two processes, or the synchronous path, writing one run: a beat never moves the last heartbeat
  back (GREATEST), and the statement locks its rows in id order (no deadlock between writers).
"""

import atexit
import logging
import os
import select
import threading
import time
import uuid
from typing import NamedTuple

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from runs.models import State

logger = logging.getLogger(__name__)

CHANNEL = "orchestrator_flow_run_changed"  # migration 0020's triggers announce on it
# The states of the runs a view holds: those the triggers announce a change from (migration 0020
# names them too). A beat of a run in another state is always written in its request.
VIEWED_STATES = (State.RUNNING, State.CANCELLING)
# The view answers only while the writes succeeded within this many intervals.
MAX_AGE_INTERVALS = 3
# A run not heard for this long leaves the view (five beats of the agents' default 30 s interval);
# when no run was, the thread ends and closes its connections (a beat starts it again).
FORGET_AFTER_SECONDS = 150
# Most runs a process views or remembers hearing; a beat of any other run takes the synchronous path.
CAPACITY = 20_000
# The least time between two takes of the announcements: how late the view may forget a changed run.
TAKE_EVERY_SECONDS = 0.1
# How often the thread looks for runs not heard for FORGET_AFTER_SECONDS (each look reads them all).
EVICT_EVERY_SECONDS = 10
# The thread announces a token of its own this often, on its statements' connection, and trusts
# its listener only while the last one came back within LISTENER_TRUSTED_SECONDS: a listener that
# hears nothing (a pooler in transaction mode, where LISTEN does not last) never answers a beat.
PING_EVERY_SECONDS = 5.0
LISTENER_TRUSTED_SECONDS = 3 * PING_EVERY_SECONDS
EXIT_WAIT_SECONDS = 5.0
FAILURE_LOG_EVERY_SECONDS = 60.0


class Viewed(NamedTuple):
    row: tuple  # (state, flow_id, work_queue_id, agent_id): what hot_sql.beat_flow_run returns
    generation: int
    workspace_id: int


class Mark(NamedTuple):
    """Where the announcements stood when a synchronous beat's statement was sent."""
    session: int  # which unbroken listening session
    seen: int  # how many announcements it had taken


def interval():
    """Seconds between the writer's statements; 0 when beats are written in the request."""
    return settings.ORCHESTRATOR["HEARTBEAT_WRITE_BEHIND_SECONDS"]


def applies():
    """Whether a beat now may be written behind: PostgreSQL, switched on, outside a transaction."""
    db = connections[DEFAULT_DB_ALIAS]
    return db.vendor == "postgresql" and interval() > 0 and not db.in_atomic_block


class BeatsBehind:
    def __init__(self):
        self._after_fork_in_child()

    def _after_fork_in_child(self):
        """A forked child has none of the parent's threads, and a lock another thread held at the
        fork stays held there: everything new. The parent writes what it had pending."""
        self._lock = threading.Lock()  # guards everything below but the events and the thread
        self._writing = threading.Lock()  # one writer at a time: the thread, `write_now`, the exit
        self._stop = threading.Event()  # set: the thread ends at its next tick (`forget`)
        self._thread = None
        self._wake_fd = None  # the thread's pipe, written to wake it
        self._view = {}  # run id -> Viewed
        self._pending = {}  # run id -> (moment, generation, workspace id): the latest beat to write
        self._heard = {}  # run id -> time.monotonic() of its last beat here
        self._session = 0  # the listening session; 0: not listening
        self._sessions = 0  # sessions begun in this process
        self._seen = 0  # announcements taken in this session
        self._changed_at = {}  # run id -> self._seen when it was announced, in this session
        self._floor = 0  # marks before it are void: every run was announced (or `_changed_at` cleared)
        self._written_at = time.monotonic()  # the last write that succeeded, or found nothing to write
        self._ping_token = None  # the thread's last announced token
        self._pings = 0
        self._pinged_back_at = None  # time.monotonic() when the listener heard its last token
        self._busy_since = None  # time.monotonic() when the thread sent a statement not yet answered
        self._last_failure_logged = None

    # --- the requests' side ---

    def answer(self, run_id, workspace_id, now, generation):
        """The beat's row from the view, the beat noted to be written; None when the view cannot
        answer it as the database would (the caller then writes it in the request)."""
        seconds = interval()
        entry = self._view.get(run_id)
        if (entry is None or entry.generation != generation or entry.workspace_id != workspace_id
                or not self.answering(seconds)):
            return None
        with self._lock:
            if self._view.get(run_id) is not entry:  # announced changed meanwhile
                return None
            earlier = self._pending.get(run_id)
            if earlier is None or earlier[0] < now:
                self._pending[run_id] = (now, generation, workspace_id)
            self._heard[run_id] = time.monotonic()
        self._started(seconds)
        return entry.row

    def answering(self, seconds=None):
        """Whether the view may answer now: its writes succeeded within MAX_AGE_INTERVALS intervals,
        its listener heard its own announcement within LISTENER_TRUSTED_SECONDS, and the thread is
        not held up in a statement (a write waiting for a row's lock) for longer than it may leave
        announcements untaken."""
        now, pinged_back_at, busy_since = time.monotonic(), self._pinged_back_at, self._busy_since
        return (now - self._written_at <= (seconds or interval()) * MAX_AGE_INTERVALS
                and pinged_back_at is not None and now - pinged_back_at <= LISTENER_TRUSTED_SECONDS
                and (busy_since is None or now - busy_since <= TAKE_EVERY_SECONDS))

    def mark(self):
        """Taken before a synchronous beat's statement is sent, for `learn`; None when not listening."""
        session = self._session
        return Mark(session, self._seen) if session else None

    def learn(self, run_id, workspace_id, generation, row, mark):
        """Take a synchronous beat's answer `row` into the view: only when the thread listened, in
        one session, from before its statement was sent (`mark`) until now, the run was not
        announced changed since, and it is in one of the VIEWED_STATES (a change from those is
        announced). Either way the run was heard: the thread runs."""
        with self._lock:
            if run_id in self._heard or len(self._heard) < CAPACITY:
                self._heard[run_id] = time.monotonic()
                if (mark is not None and mark.session == self._session and mark.seen >= self._floor
                        and self._changed_at.get(run_id, -1) <= mark.seen and row[0] in VIEWED_STATES):
                    self._view[run_id] = Viewed(tuple(row), generation, workspace_id)
        self._started(interval())

    def write_now(self, timeout=None):
        """Write what is pending, in the caller; False when the writer was busy for longer than
        `timeout` (None: wait) or the statement failed, else True."""
        if not self._writing.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            return self._write_once() is not False
        finally:
            self._writing.release()

    def pending(self):
        """How many runs have a beat waiting to be written."""
        return len(self._pending)

    def viewed(self):
        return len(self._view)

    def forget(self, timeout=10.0):
        """Forget every run, and wait until the thread has closed its database connections and
        ended (the tests', between tests); False on timeout."""
        with self._lock:
            self._view.clear()
            self._pending.clear()
            self._heard.clear()
        thread = self._thread
        if thread is None:
            return True
        self._stop.set()
        with self._lock:
            if self._wake_fd is not None:
                os.write(self._wake_fd, b"!")
        thread.join(timeout)
        return not thread.is_alive()

    # --- the thread ---

    def _started(self, seconds):
        """The thread of this process running (started again after a fork, or after it ended)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:
                if self._thread is thread:
                    self._stop.clear()
                    self._thread = threading.Thread(target=self._run, args=(seconds,), name="beats-behind",
                                                    daemon=True)
                    self._thread.start()

    def _run(self, seconds):
        listener, due, evicted, taken, ping_due = None, time.monotonic() + seconds, time.monotonic(), 0.0, 0.0
        wake, self._wake_fd = os.pipe()  # `forget` writes to it: the thread need not tick to see `_stop`
        try:
            while not self._stop.is_set():
                try:
                    if listener is None:
                        listener, ping_due = self._listen(), 0.0
                    if time.monotonic() >= ping_due:
                        ping_due = time.monotonic() + PING_EVERY_SECONDS
                        self._busy(self._ping, listener)
                    select.select([listener.fileno(), wake], [], [], max(0.0, min(due, ping_due) - time.monotonic()))
                    # Announcements come one by one; taken at most every TAKE_EVERY_SECONDS, many
                    # cost one wake-up of the thread.
                    self._stop.wait(max(0.0, min(taken + TAKE_EVERY_SECONDS, due) - time.monotonic()))
                    taken = time.monotonic()
                    for notice in listener.notifies(timeout=0):  # also what came with another answer
                        self._announced(notice.payload)
                    if time.monotonic() < due:
                        continue
                    due = time.monotonic() + seconds
                    evict = time.monotonic() - evicted >= EVICT_EVERY_SECONDS
                    evicted = time.monotonic() if evict else evicted
                    if self._busy(self._write_behind, listener, evict) is None:
                        return  # no run heard lately: end, holding no connection
                except Exception:  # the listener lost, or the database refused it: a new session
                    listener = self._disconnect(listener)
                    self._log_failure("Could not listen for flow runs' changes; beats are written in their requests")
                    self._stop.wait(seconds)
        finally:
            self._disconnect(listener)
            with self._lock:  # beats that came meanwhile start the next thread
                if self._thread is threading.current_thread():
                    self._thread = None
                os.close(wake)
                os.close(self._wake_fd)
                self._wake_fd = None
            if self._pending and not self._stop.is_set():
                self._started(seconds)

    def _disconnect(self, listener):
        """Stop listening, and close the statements' connection too (the ping's and the writes'):
        when the database restarted it is as broken as the listener's, and Django would hand the
        broken one back for ever."""
        self._stop_listening(listener)
        connections[DEFAULT_DB_ALIAS].close()

    def _busy(self, work, listener, *args):
        """`work(*args)`, the view not answering while it takes longer than TAKE_EVERY_SECONDS (the
        announcements wait meanwhile), and those that came meanwhile taken before it answers again."""
        self._busy_since = time.monotonic()
        try:
            done = work(*args)
            for notice in listener.notifies(timeout=0):
                self._announced(notice.payload)
            return done
        finally:
            self._busy_since = None

    def _write_behind(self, evict):
        with self._writing:  # `write_now` may hold it: waiting for it is waiting like a statement
            return self._write_once(evict)

    def _listen(self):
        db = connections[DEFAULT_DB_ALIAS]
        listener = db.get_new_connection(db.get_connection_params())
        listener.autocommit = True
        listener.execute(f"LISTEN {CHANNEL}")
        with self._lock:
            self._sessions += 1
            self._session, self._seen, self._floor = self._sessions, 0, 0
            self._pinged_back_at = None
            self._written_at = time.monotonic()  # nothing failed in this session yet
            self._changed_at.clear()
            self._view.clear()  # read before this session: nothing says whether they changed since
        return listener

    def _ping(self):
        self._pings += 1
        self._ping_token = f"?{os.getpid()}-{self._pings}"
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, self._ping_token])

    def _stop_listening(self, listener):
        with self._lock:
            self._session = 0
            self._pinged_back_at = None
            self._view.clear()
        if listener is not None:
            try:
                listener.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
        return None

    def _announced(self, payload):
        if payload.startswith("?"):  # a thread's token: this one's, or another process's
            if payload == self._ping_token:
                self._pinged_back_at = time.monotonic()
            return
        with self._lock:
            self._seen += 1
            if payload == "*":  # runs deleted: forget every one
                self._view.clear()
                self._changed_at.clear()
                self._floor = self._seen
                return
            try:
                run_id = uuid.UUID(payload)
            except ValueError:
                return
            self._view.pop(run_id, None)
            if len(self._changed_at) >= CAPACITY:
                self._changed_at.clear()
                self._floor = self._seen
            self._changed_at[run_id] = self._seen

    def _write_once(self, evict=True):
        """One statement writing the pending beats: True when it was sent (or nothing was pending
        but runs were heard lately), False when it failed, None when no run was heard lately.
        `evict`: first forget the runs not heard for FORGET_AFTER_SECONDS."""
        from runs import hot_sql

        with self._lock:
            beats, self._pending = self._pending, {}
            if evict:
                horizon = time.monotonic() - FORGET_AFTER_SECONDS
                for run_id in [run_id for run_id, heard in self._heard.items() if heard < horizon]:
                    del self._heard[run_id]
                    self._view.pop(run_id, None)
            heard = bool(self._heard)
        if not beats:
            self._written_at = time.monotonic()
            return True if heard else None
        try:
            hot_sql.write_beats(beats)
        except Exception:
            with self._lock:  # written next time, unless a later beat of the run came meanwhile
                for run_id, beat in beats.items():
                    later = self._pending.get(run_id)
                    if later is None or later[0] < beat[0]:
                        self._pending[run_id] = beat
            self._log_failure(f"Could not write {len(beats)} flow runs' heartbeats behind; trying again in "
                              f"{interval()}s")
            connections[DEFAULT_DB_ALIAS].close()  # the next statement gets a new connection
            return False
        self._written_at = time.monotonic()
        return True

    def _log_failure(self, message):
        now = time.monotonic()
        if self._last_failure_logged is None or now - self._last_failure_logged >= FAILURE_LOG_EVERY_SECONDS:
            self._last_failure_logged = now
            logger.exception("%s.", message)


beats_behind = BeatsBehind()
os.register_at_fork(after_in_child=beats_behind._after_fork_in_child)


@atexit.register
def _write_before_exit():
    if beats_behind.pending() and not beats_behind.write_now(EXIT_WAIT_SECONDS):
        logger.error("%d flow runs' heartbeats pending at exit were not written.", beats_behind.pending())
