"""Run the processes of a Procfile, restart the one that dies, stop them all on a signal.

One thread waits and decides (start, reap, restart, stop); one reader thread per process
prefixes its output lines. Every process leads its own session and process group, so a stop
reaches its children too, and a terminal's Ctrl-C reaches only the supervisor, which stops the
processes in reverse order.
"""

import ctypes
import datetime
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from honcho.colour import get_colours
from honcho.printer import Message, Printer

SYSTEM_NAME = "system"  # honcho's name for the runner's own lines
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# A second Ctrl-C kills everything at once, unless it comes this soon (seconds) after the first
# stop signal: then it is a copy, e.g. `make` or `timeout` passing on what the group already got.
FORCE_AFTER_SECONDS = 0.5
# When the stop in reverse order ran out of time, how long the processes that were still waiting
# their turn get between their SIGTERM and SIGKILL (at most the stop timeout).
LATE_GRACE_SECONDS = 5.0
# After SIGKILL, how long to wait for the kernel to finish the processes off.
KILL_WAIT_SECONDS = 5.0
# Shell words that `exec CMD` would change the meaning of: lists, pipes, background, grouping
# (redirections are fine: exec keeps them).
_SHELL_OPERATORS = {";", ";;", "&", "&&", "|", "||", "|&", "(", ")"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_COMPOUND = {"if", "for", "while", "until", "case", "{", "!", "exec"}


class Backoff:
    """The wait before restarting a process: `initial` seconds, doubling with every exit in a
    row up to `maximum`; a process that stayed up `reset_after` seconds starts over at `initial`."""

    def __init__(self, initial=1.0, maximum=30.0, reset_after=60.0):
        self.initial, self.maximum, self.reset_after = initial, maximum, reset_after
        self.exits_in_a_row = 0

    def after_exit(self, uptime):
        """Count an exit after `uptime` seconds up; return the wait before the next start."""
        if uptime >= self.reset_after:
            self.exits_in_a_row = 0
        delay = min(self.initial * 2 ** min(self.exits_in_a_row, 32), self.maximum)
        self.exits_in_a_row += 1
        return delay


@dataclass
class Supervised:
    """One line of the Procfile and its current process."""

    name: str
    command: str
    colour: str
    backoff: Backoff
    popen: subprocess.Popen = None
    pgid: int = None  # of the latest process, kept after it exits: its children may outlive it
    started: float = 0.0
    restart_at: float = None
    readers: list = field(default_factory=list)  # output threads, joined at the end: no lost last words


def shell_argv(command):
    """`sh -c` as foreman and honcho run a Procfile line, with `exec` when the line is one simple
    command: the process we watch and signal is then the program itself, not a shell around it."""
    try:
        words = list(shlex.shlex(command, posix=True, punctuation_chars=True))
    except ValueError:  # unbalanced quotes: let the shell say so
        words = []
    simple = (words and words[0] not in _COMPOUND and not _ASSIGNMENT.match(words[0])
              and not any(word in _SHELL_OPERATORS for word in words))
    return ["/bin/sh", "-c", f"exec {command}" if simple else command]


def describe_exit(code):
    """'code 1' or 'signal 9 (SIGKILL)' from a Popen-style return code."""
    if code >= 0:
        return f"code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


def group_alive(pgid):
    """Whether any process of the group `pgid` still exists (that we may signal)."""
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_group(pgid, signum):
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def become_subreaper():
    """On Linux, make orphaned descendants (e.g. the flow runners of an agent that was killed)
    our children instead of init's, so that a stop finds and ends them too."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children_of(pid):
    """Pids whose parent is `pid`, from /proc (Linux; elsewhere none)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != b"Z":
            found.append(int(entry))
    return found


def _seconds(value):
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


class Supervisor:
    """Keeps the processes of `commands` ({name: shell command}, in Procfile order) running.

    `run()` returns the exit code once a SIGINT, SIGTERM or SIGHUP stopped everything: 128 + the
    signal's number, as a shell reports a process that signal ended (130 after Ctrl-C).
    """

    def __init__(self, commands, *, output=None, colour=True, stop_timeout=40.0, backoff_initial=1.0,
                 backoff_max=30.0, backoff_reset=60.0, cwd=None, env=None, ready_url=None, ready_lines=(),
                 ready_timeout=180.0):
        if not commands:
            raise ValueError("no processes to run")
        colours = get_colours()
        self.processes = [Supervised(name, command, next(colours), Backoff(backoff_initial, backoff_max, backoff_reset))
                          for name, command in commands.items()]
        self.stop_timeout = stop_timeout
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        # Python programs print at once instead of in 8 KiB blocks when their stdout is a pipe.
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        width = max(len(name) for name in [SYSTEM_NAME, *commands])
        self._printer = Printer(output or sys.stdout, width=width, colour=colour)
        self._print_lock = threading.Lock()
        self._by_pid = {}
        self._stop_signal = None
        self._stop_signal_at = None
        self._forced = False
        self._wakeup = None
        # Once `ready_url` answers, `ready_lines` (callables or strings) are printed: where to go
        # and how to log in, after the start-up lines that pushed the seed's message off screen.
        self.ready_url = ready_url
        self.ready_lines = ready_lines
        self.ready_timeout = ready_timeout

    # Output -------------------------------------------------------------------------------

    def _write(self, name, data, colour=None):
        message = Message(type="line", data=data, time=datetime.datetime.now(), name=name, colour=colour)
        with self._print_lock:
            self._printer.write(message)

    def say(self, text):
        self._write(SYSTEM_NAME, text)

    def _announce_when_ready(self):
        """Poll `ready_url` until it answers 2xx, then print the ready lines once (or say that it
        did not answer within `ready_timeout` seconds)."""
        deadline = time.monotonic() + self.ready_timeout
        while self._stop_signal is None:
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as answer:
                    if 200 <= answer.status < 300:
                        for line in self.ready_lines:
                            text = line() if callable(line) else line
                            if text:
                                self.say(text)
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                self.say(f"{self.ready_url} did not answer within {self.ready_timeout:.0f} s; see the lines above")
                return
            time.sleep(0.5)

    def _forward(self, proc, stream):
        for line in iter(stream.readline, b""):
            self._write(proc.name, line, proc.colour)
        stream.close()

    # Signals --------------------------------------------------------------------------------

    def _on_stop_signal(self, signum, _frame):
        now = time.monotonic()
        if self._stop_signal is None:
            self._stop_signal, self._stop_signal_at = signum, now
        elif signum == signal.SIGINT and now - self._stop_signal_at > FORCE_AFTER_SECONDS:
            self._forced = True

    def _install_signal_handlers(self):
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wakeup = read_end
        # Any signal writes to the pipe, so the loop's select() wakes at once: no polling.
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def _sleep(self, timeout):
        """Wait up to `timeout` seconds or until a signal (a child exit, a stop) arrives."""
        try:
            ready, _, _ = select.select([self._wakeup], [], [], max(timeout, 0))
        except InterruptedError:  # pragma: no cover - select retries on EINTR since 3.5
            return
        if ready:
            try:
                while os.read(self._wakeup, 512):
                    pass
            except BlockingIOError:
                pass

    # Processes ------------------------------------------------------------------------------

    def _start(self, proc):
        if proc.pgid is not None:
            signal_group(proc.pgid, signal.SIGKILL)  # what the previous one left in its group
        proc.started, proc.restart_at = time.monotonic(), None
        try:
            popen = subprocess.Popen(shell_argv(proc.command), cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self._schedule_restart(proc, f"could not start: {exc}")
            return
        proc.popen, proc.pgid = popen, popen.pid
        self._by_pid[popen.pid] = proc
        reader = threading.Thread(target=self._forward, args=(proc, popen.stdout), name=f"output-{proc.name}",
                                  daemon=True)
        reader.start()
        proc.readers = [r for r in proc.readers if r.is_alive()] + [reader]
        self.say(f"{proc.name} started (pid={popen.pid})")

    def _schedule_restart(self, proc, what):
        uptime = time.monotonic() - proc.started
        delay = proc.backoff.after_exit(uptime)
        proc.restart_at = time.monotonic() + delay
        in_a_row = proc.backoff.exits_in_a_row
        if in_a_row == 1:
            self.say(f"{proc.name} {what}; restarting in {delay:g} s")
            return
        limit = (f"the longest wait; it shortens once {proc.name} stays up {proc.backoff.reset_after:g} s"
                 if delay >= proc.backoff.maximum else
                 f"the wait doubles, up to {proc.backoff.maximum:g} s, until it stays up {proc.backoff.reset_after:g} s")
        self.say(f"{proc.name} {what} after {_seconds(uptime)}, {in_a_row} times in a row; "
                 f"restarting in {delay:g} s ({limit})")

    def _reap(self):
        """Collect every child that exited: our processes, and orphans we adopted as subreaper."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self._by_pid.pop(pid, None)
            if proc is None:  # an adopted orphan: reaping it is all we owe it, and a line
                self.say(f"pid {pid} (orphaned by a process that exited) exited with "
                         f"{describe_exit(os.waitstatus_to_exitcode(status))}")
                continue
            # We reap for Popen (waitpid(-1) is the only way to also reap orphans), so tell it.
            code = proc.popen.returncode = os.waitstatus_to_exitcode(status)
            # Its group's other members belong to the dead process: ask them to go, and the next
            # start kills what is left, so two generations never run side by side.
            signal_group(proc.pgid, signal.SIGTERM)
            if self._stop_signal is None:
                self._schedule_restart(proc, f"exited with {describe_exit(code)}")
            else:
                self.say(f"{proc.name} exited with {describe_exit(code)}")

    def _orphan_groups(self):
        """Process groups of our adopted orphans, other than our processes' own groups."""
        known = {p.pgid for p in self.processes} | {os.getpgrp()}
        groups = set()
        for pid in children_of(os.getpid()):
            if pid in self._by_pid:
                continue
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if pgid not in known:
                groups.add(pgid)
        return groups

    # Main loop ------------------------------------------------------------------------------

    def run(self):
        """Start everything, keep it running until a stop signal, stop it; return the exit code."""
        self._install_signal_handlers()
        become_subreaper()
        try:
            for proc in self.processes:
                if self._stop_signal is None:
                    self._start(proc)
            if self.ready_url:
                threading.Thread(target=self._announce_when_ready, name="ready-banner", daemon=True).start()
            while self._stop_signal is None:
                pending = [p.restart_at for p in self.processes if p.restart_at is not None]
                self._sleep(min(pending) - time.monotonic() if pending else 60.0)
                self._reap()
                now = time.monotonic()
                for proc in self.processes:
                    if self._stop_signal is None and proc.restart_at is not None and proc.restart_at <= now:
                        self._start(proc)
            return self._stop()
        finally:
            # Whatever happened (even a bug here), leave nothing running behind us.
            for pgid in {p.pgid for p in self.processes if p.pgid} | self._orphan_groups():
                signal_group(pgid, signal.SIGKILL)

    def _wait_until(self, groups, deadline, orphans_get=signal.SIGTERM):
        """Wait until every process group in `groups` is gone; True if they are. Orphans that turn
        up meanwhile (children a dead process left in other groups) get `orphans_get` and join."""
        while True:
            self._reap()
            for pgid in self._orphan_groups() - groups:
                self.say(f"sending {signal.Signals(orphans_get).name} to process group {pgid} "
                         f"(orphaned by a process that exited)")
                signal_group(pgid, orphans_get)
                groups.add(pgid)
            if not any(group_alive(g) for g in groups):
                return True
            if time.monotonic() >= deadline or self._forced:
                return False
            self._sleep(min(0.05, deadline - time.monotonic()))

    def _stop(self):
        """Stop in reverse Procfile order (the agent before the web server it reports to): each
        process group gets SIGTERM once the ones after it are gone. If that takes longer than
        `stop_timeout`, the groups still waiting their turn get SIGTERM together and a short grace;
        then whatever still runs (or everything, at a second Ctrl-C) gets SIGKILL."""
        signum = self._stop_signal
        started = time.monotonic()
        deadline = started + self.stop_timeout
        for proc in self.processes:
            proc.restart_at = None
        hint = " (Ctrl-C again to kill everything now)" if signum == signal.SIGINT else ""
        self.say(f"{signal.Signals(signum).name} received: stopping, up to {self.stop_timeout:g} s{hint}")
        waiting = set()  # every group asked to stop so far; orphans join in _wait_until
        in_turn, late = True, False
        for proc in reversed(self.processes):
            if proc.pgid is None or not group_alive(proc.pgid) or self._forced:
                continue
            if in_turn:
                self.say(f"sending SIGTERM to {proc.name} (pid {proc.pgid})")
            else:
                self.say(f"sending SIGTERM to {proc.name} (pid {proc.pgid}): the stop in turn ran out of time")
                late = True
            signal_group(proc.pgid, signal.SIGTERM)
            waiting.add(proc.pgid)
            if in_turn and not self._wait_until(waiting, deadline):
                in_turn = False
        # Those that got their SIGTERM late get a short grace; otherwise, wait for orphans.
        self._wait_until(waiting, time.monotonic() + min(LATE_GRACE_SECONDS, self.stop_timeout) if late else deadline)
        why = "on a second Ctrl-C" if self._forced else f"still running after {_seconds(time.monotonic() - started)}"
        names = {p.pgid: p.name for p in self.processes}
        left = {g for g in waiting | {p.pgid for p in self.processes if p.pgid} | self._orphan_groups()
                if group_alive(g)}
        for pgid in sorted(left):
            who = f"{names[pgid]} (pid {pgid})" if pgid in names else f"process group {pgid}"
            self.say(f"sending SIGKILL to {who}: {why}")
            signal_group(pgid, signal.SIGKILL)
        self._forced = False
        self._wait_until(left, time.monotonic() + KILL_WAIT_SECONDS, signal.SIGKILL)
        # The pipes close when the last process holding them is gone; print what was still in them.
        flush_deadline = time.monotonic() + 1.0
        for reader in [r for p in self.processes for r in p.readers]:
            reader.join(timeout=max(flush_deadline - time.monotonic(), 0))
        return 128 + signum
