"""The sender under a forking server (gunicorn's pre-fork model): a child gets a sender of its own
that works even when the parent forked while another thread held the sender's lock or its flush
event's lock (a child inherits a held lock with no thread to release it: a deadlock)."""

import os
import select
import signal

import pytest

from events import buffer
from events.sender import sender


def fork_and_send(monkeypatch):
    """Fork; the child sends one event and exits 0 when its sender handed it to the buffer (the
    buffer's push replaced by a write to a pipe), 1 on a timeout; SIGALRM kills a deadlocked child."""
    read_end, write_end = os.pipe()
    monkeypatch.setattr(buffer, "push", lambda events: os.write(write_end, b"sent") and "redis")
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            signal.alarm(5)
            sender.send([{"name": "forked"}])
            os._exit(0 if sender.wait(3) else 1)
        except BaseException:
            os._exit(2)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    ready, _, _ = select.select([read_end], [], [], 0)
    got = os.read(read_end, 100) if ready else b""
    os.close(read_end)
    return status, got


@pytest.mark.parametrize("held", ["start lock", "flush event lock"])
def test_a_child_forked_while_a_lock_was_held_still_sends(monkeypatch, held):
    monkeypatch.setattr(buffer, "push", lambda events: "redis")
    sender.send([{"name": "warm-up"}])  # the parent's thread runs, as in a worker that served requests
    sender.wait(3)
    lock = sender._lock if held == "start lock" else sender._flush._cond
    with lock:  # another thread of the parent is inside it at the moment of the fork
        status, got = fork_and_send(monkeypatch)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status} (deadlocked?)"
    assert got == b"sent"
