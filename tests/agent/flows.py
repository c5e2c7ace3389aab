"""Flows the end-to-end tests give the agent to run (imported by the agent's subprocess)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent import flow, task

attempts = {"flaky": 0}


@task
def wait(seconds):
    time.sleep(seconds)
    return seconds


@task(retries=2, retry_delay_seconds=0)
def flaky():
    attempts["flaky"] += 1
    if attempts["flaky"] == 1:
        raise RuntimeError("first attempt fails")
    return attempts["flaky"]


@task
def shout(text):
    logging.getLogger("tests.flows").warning("shouting %s", text)
    return text.upper()


@flow
def steady(seconds=1.2):
    """Long enough for several heartbeats; one task retries once."""
    waited = wait(seconds)
    tries = flaky()
    print(f"waited {waited}, flaky took {tries} attempts")
    return shout("done")


@flow
def noop():
    return None


@flow
def broken():
    raise ValueError("this flow is broken on purpose")


@flow
def forever():
    wait(600)


def _wait_for_file(path, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)


@task
def step(name, marks, gate=None):
    """Counts its executions in marks/<name> (one line each, the pid), then waits for `gate` if given."""
    with open(Path(marks) / name, "a") as counter:
        counter.write(f"{os.getpid()}\n")
    if gate:
        _wait_for_file(gate)
    return {"step": name, "pid": os.getpid()}


@flow
def three_steps(marks, gate):
    """Step two waits until the test opens the gate; what follows is logged in three ways."""
    one = step("one", marks)
    two = step("two", marks, gate)
    print(f"step two done in {two['pid']}")
    subprocess.run([sys.executable, "-c", "print('printed by a subprocess of the flow')"], check=True)
    logging.getLogger("tests.flows").warning("logged after step two")
    three = step("three", marks)
    (Path(marks) / "results.json").write_text(json.dumps([one, two, three]))
    return [one["step"], two["step"], three["step"]]


@task
def hold(marks):
    """Runs until stopped; its `finally` leaves a mark, so a test sees that cleanup ran."""
    with open(Path(marks) / "hold", "a") as counter:
        counter.write(f"{os.getpid()}\n")
    try:
        time.sleep(600)
    finally:
        (Path(marks) / "cleaned-up").write_text("yes")


@flow
def cancellable(marks):
    try:
        hold(marks)
    except Exception:  # noqa: BLE001 - a stop must not be swallowed by user code like this
        (Path(marks) / "swallowed").write_text("the stop was caught as an Exception")
        time.sleep(600)


def _square(x):
    return x * x


def _say_started_and_sleep(started):
    started.set()
    time.sleep(600)


@flow
def pooled(seconds):
    """Leaving the pool's with block terminates its forked workers (SIGTERM: those still alive then), and
    a forked process the flow started is terminated for certain; then the flow goes on."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        squares = pool.map(_square, range(4))
    started = context.Event()
    worker = context.Process(target=_say_started_and_sleep, args=(started,))
    worker.start()
    started.wait(30)
    worker.terminate()
    worker.join(30)
    time.sleep(seconds)
    return squares, worker.exitcode


@flow
def stubborn(marks):
    """Ignores SIGTERM, as some user code does: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (Path(marks) / "stubborn").write_text(str(os.getpid()))
    time.sleep(600)


@flow
def killed():
    """Dies the way the out-of-memory killer ends a process: no chance to report."""
    logging.getLogger("tests.flows").warning("about to be killed")
    print("printed just before")
    time.sleep(0.2)  # the runner reads its pipe in a thread: give it the line (its shipper sends every 1 s)
    os.kill(os.getpid(), signal.SIGKILL)


@flow
def what_the_flow_holds(path):
    """Writes which credentials its environment holds, for the test that the agent's key is not one."""
    env = os.environ
    Path(path).write_text(json.dumps({
        "api_key": [name for name in ("ORCHESTRATOR_API_KEY", "ORCHESTRATOR_API_KEY_FILE") if name in env],
        "secrets": [name for name, value in env.items() if value.startswith("orch_")],
        "run_token": env.get("ORCHESTRATOR_RUN_TOKEN", ""),
    }))


@task
def connect():
    password = os.environ["DB_PASSWORD"]
    print(f"stdout: connecting with {password}")
    logging.getLogger("tests.flows").warning("logged: connecting with %s", password)
    return {"dsn": f"postgres://app:{password}@db/app"}  # a result holding a secret is not kept


@flow
def leaks_its_secret(path):
    """Does every careless thing with its secret; the test then looks for it everywhere."""
    Path(path).write_text(os.environ["DB_PASSWORD"])  # it did get it
    connect()
    print(f"stderr too: {os.environ['DB_PASSWORD']}", file=sys.stderr)
    raise RuntimeError(f"login refused for password {os.environ['DB_PASSWORD']}")


# --- Flows that do not stop when asked, and leave processes behind --------------------------------

# A child that ignores SIGTERM and double-forks a grandchild that ignores it too: the grandchild's
# parent exits, so it is nobody's child any more, but it stays in the runner's process group. Both
# append their pid to the file given as argv[1].
STUBBORN_CHILDREN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def note():
    with open(sys.argv[1], "a") as pids:
        pids.write(f"{os.getpid()}\\n")
if os.fork() == 0:
    if os.fork() == 0:
        note()
        time.sleep(600)
    os._exit(0)
note()
time.sleep(600)
"""


def start_stubborn_children(marks):
    """Start STUBBORN_CHILDREN; returns once both wrote their pid to marks/children."""
    pids = Path(marks) / "children"
    subprocess.Popen([sys.executable, "-c", STUBBORN_CHILDREN, str(pids)])
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        if time.monotonic() > deadline:
            raise TimeoutError("the children never started")
        time.sleep(0.05)


@flow
def deaf(marks):
    """Leaves stubborn children, then swallows every stop (FlowRunStopped included) and carries on."""
    start_stubborn_children(marks)
    while True:
        try:
            (Path(marks) / "ready").write_text("yes")  # in the try: a stop from here on is swallowed
            time.sleep(600)
        except BaseException:  # noqa: BLE001 - the point: user code that swallows the stop
            (Path(marks) / "ignored").write_text("the stop was swallowed")


@flow
def stuck_in_c(marks):
    """Swallows the stop, then holds the GIL in C code (a regular expression that backtracks for ages)."""
    import re

    start_stubborn_children(marks)
    try:
        (Path(marks) / "ready").write_text("yes")
        time.sleep(600)
    except BaseException:  # noqa: BLE001
        (Path(marks) / "ignored").write_text("the stop was swallowed")
        re.match(r"(a+)+$", "a" * 64 + "b")


@flow
def sleeps_in_a_thread(marks):
    """Its work sleeps in a thread of its own (not a daemon): the main thread stops, the thread does not."""
    import threading

    worker = threading.Thread(target=time.sleep, args=(600,), name="sleeper")
    worker.start()
    (Path(marks) / "ready").write_text("yes")
    while worker.is_alive():  # not join(): Python 3.11 forgets a thread whose join() a signal interrupted
        time.sleep(0.1)


@flow
def exits_leaving_children(marks, code=7):
    """Leaves stubborn children and ends the process under its runner's feet."""
    start_stubborn_children(marks)
    os._exit(code)


@flow
def returns_leaving_children(marks):
    start_stubborn_children(marks)
    return "done"


@flow
def superseded(marks):
    """Leaves stubborn children, then tells its runner what a report refused as `superseded` tells it
    (another attempt has the run), from another thread, and swallows the stop."""
    import threading

    from agent import sdk

    start_stubborn_children(marks)
    threading.Thread(target=sdk._context.on_superseded).start()
    while True:
        try:
            time.sleep(600)
        except BaseException:  # noqa: BLE001
            (Path(marks) / "ignored").write_text("the stop was swallowed")
