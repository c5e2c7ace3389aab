"""`make run`'s supervisor: a process that dies is restarted and never takes the others down;
Ctrl-C or SIGTERM stops every process group, leaves nothing running, and says how it ended.

The processes are small stand-ins (tests/platform/procfile_standin.py) in a Procfile each test
writes; the supervisor runs as a real subprocess, as under `make run`.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from supervise import Backoff, describe_exit, shell_argv
from supervise.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).with_name("procfile_standin.py")
# Pids the stand-ins print ("web ready 123", "grandchild 456", ...), to check and to clean up.
PID_LINE = re.compile(r"\b(?:ready|grandchild|runner) (\d+)")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid):
    """Whether `pid` exists and is not a zombie (a dead child its parent has not collected yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


def parent_of(pid):
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[1])


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


class Running:
    """A started runner (the supervisor, or `make run`) and the lines it printed."""

    def __init__(self, command, cwd, env):
        self.lines = []
        # A session of its own, as a terminal gives a foreground job: a Ctrl-C is a SIGINT to the group.
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def output(self):
        return "\n".join(self.lines)

    def line(self, pattern, timeout=10.0):
        """The first match of `pattern` in the lines printed so far, waiting for one."""
        regex = re.compile(pattern)

        def find():
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            return None

        return wait_for(find, timeout, what=lambda: f"{pattern!r} in:\n{self.output}")

    def matches(self, pattern):
        return [m for line in list(self.lines) if (m := re.search(pattern, line))]

    def ready_pid(self, name):
        return int(self.line(rf"\| {name} ready (\d+)").group(1))

    def ctrl_c(self):
        os.killpg(self.process.pid, signal.SIGINT)

    def wait(self, timeout=15.0):
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def pids(self):
        return {int(m.group(1)) for line in self.lines for m in PID_LINE.finditer(line)}


@pytest.fixture
def start(tmp_path):
    """start({name: stand-in arguments}, *supervisor_args, make=False) -> Running; whatever a test
    leaves running is killed."""
    started = []

    def _start(processes, *args, make=False, env=None):
        procfile = tmp_path / "Procfile"
        procfile.write_text("".join(f"{name}: {sys.executable} {STANDIN} {command}\n"
                                    for name, command in processes.items()))
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        if make:
            # `make run` exactly as a developer types it, minus migrate and seed (-o: take them as
            # done), in a folder whose .venv is this interpreter's and whose Procfile is ours.
            (tmp_path / ".venv").symlink_to(sys.prefix)
            command = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-o", "seed", "run"]
        else:
            command = [sys.executable, "-m", "supervise", "-f", str(procfile), *args]
        running = Running(command, tmp_path, env)
        started.append(running)
        return running

    yield _start
    for running in started:
        if running.process.poll() is None:
            os.killpg(running.process.pid, signal.SIGKILL)
            running.process.wait()
        for pid in running.pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# The regression: under `make run` (honcho until now), one killed process stopped everything.

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or sys.prefix == sys.base_prefix,
                    reason="needs make and a virtual environment, as `make run` does")
def test_make_run_restarts_a_killed_process_and_keeps_the_others_running(start):
    run = start({"web": "serve web", "agent": "serve agent"}, make=True)
    web, agent = run.ready_pid("web"), run.ready_pid("agent")

    os.kill(agent, signal.SIGKILL)

    new_agent = wait_for(lambda: {int(m.group(1)) for m in run.matches(r"\| agent ready (\d+)")} - {agent},
                         what=lambda: f"a new agent in:\n{run.output}").pop()
    assert alive(new_agent) and alive(web), run.output
    assert len(run.matches(r"\| web ready")) == 1, run.output  # web was never restarted
    assert run.matches(r"system +\| agent exited with signal 9 \(SIGKILL\); restarting in 1 s")

    run.ctrl_c()
    assert run.wait() != 0
    assert not alive(web) and not alive(new_agent)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or sys.prefix == sys.base_prefix,
                    reason="needs make and a virtual environment, as `make run` does")
def test_make_run_names_the_dashboard_and_repeats_the_login_once_web_answers(start, tmp_path):
    port = free_port()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "admin-login.txt").write_text("Log in as user 'admin' with password s3cret-for-test\n")
    run = start({"web": f"http {port}", "agent": "serve agent"}, make=True, env={"PORT": str(port)})

    banner = run.line(r"system +\| Ready\. Dashboard: (\S+)   Admin: (\S+)   API docs: (\S+)", timeout=20)
    assert banner.groups() == (f"http://127.0.0.1:{port}/dashboard/", f"http://127.0.0.1:{port}/admin/",
                               f"http://127.0.0.1:{port}/api/docs/")
    login = run.line(r"system +\| Log in as user 'admin' with password s3cret-for-test")
    # After start-up: below the web's own start line, where a person looks last.
    lines = run.lines
    assert lines.index(login.string) > next(i for i, line in enumerate(lines) if "http ready" in line)
    assert run.matches("http got /healthz")
    time.sleep(1.5)
    assert len(run.matches(r"system +\| Ready\. Dashboard")) == 1, run.output  # once, not on every poll

    run.ctrl_c()
    run.wait()


def test_the_ready_banner_says_so_when_the_url_never_answers(start):
    run = start({"agent": "serve agent"}, "--ready-url", f"http://127.0.0.1:{free_port()}/healthz",
                "--ready-message", "Ready. never printed")
    run.ready_pid("agent")
    time.sleep(1.2)
    assert not run.matches("never printed"), run.output
    run.ctrl_c()
    run.wait()


# Restarts

@pytest.mark.slow
def test_a_killed_process_is_restarted_and_the_others_keep_their_pids(start):
    run = start({"web": "serve web", "worker": "serve worker", "agent": "serve agent"}, "--backoff-initial", "0.2")
    pids = {name: run.ready_pid(name) for name in ("web", "worker", "agent")}

    os.kill(pids["worker"], signal.SIGKILL)

    run.line(r"worker exited with signal 9 \(SIGKILL\); restarting in 0\.2 s")
    restarted = int(run.line(rf"\| worker ready (?!{pids['worker']}\b)(\d+)").group(1))
    assert restarted != pids["worker"] and alive(restarted)
    assert alive(pids["web"]) and alive(pids["agent"])
    assert len(run.matches(r"\| (web|agent) ready")) == 2, run.output
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 143


@pytest.mark.slow
def test_a_process_that_keeps_exiting_waits_longer_each_time_and_says_so(start):
    run = start({"web": "serve web", "crash": "exit 3"},
                "--backoff-initial", "0.1", "--backoff-max", "0.4", "--backoff-reset", "60")
    web = run.ready_pid("web")
    wait_for(lambda: len(run.matches(r"crash exited with code 3")) >= 5, what=lambda: f"5 exits in:\n{run.output}")

    exits = run.matches(r"crash exited with code 3.*restarting in ([\d.]+) s(.*)")
    assert [float(m.group(1)) for m in exits[:5]] == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert "times in a row" not in exits[0].group(0)
    assert re.search(r"after \d+\.\d s, 3 times in a row; restarting in 0\.4 s \(the longest wait", exits[2].group(0))
    assert "the wait doubles, up to 0.4 s" in exits[1].group(0)
    # It does not spin: each start came at least the announced wait after the one before.
    starts = [float(m.group(1)) for m in run.matches(r"crash +\| cannot start: .*\(t=([\d.]+)\)")]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert all(gap >= wait for gap, wait in zip(gaps, [0.1, 0.2, 0.4, 0.4])), gaps
    assert alive(web) and len(run.matches(r"\| web ready")) == 1
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 143


# Stopping

@pytest.mark.slow
@pytest.mark.parametrize("how, code", [("ctrl-c", 130), ("sigterm", 143)])
def test_a_stop_sends_sigterm_to_every_group_in_reverse_order_and_says_how_it_ended(start, how, code):
    run = start({"web": "polite web", "worker": "polite worker", "agent": "polite agent"})
    pids = [run.ready_pid(name) for name in ("web", "worker", "agent")]

    if how == "ctrl-c":
        run.ctrl_c()  # as a terminal does: the supervisor's group only; the processes lead their own
    else:
        run.process.send_signal(signal.SIGTERM)

    assert run.wait() == code
    said = [line.split("| ", 1)[1] for line in run.lines if "got SIGTERM" in line]
    # The agent first: the web server it reports to stays up until it is gone.
    assert said == ["agent got SIGTERM", "worker got SIGTERM", "web got SIGTERM"], run.output
    assert "got SIGINT" not in run.output
    assert not any(alive(pid) for pid in pids)
    assert run.matches(r"system +\| web exited with code 0")


@pytest.mark.slow
def test_a_group_that_ignores_sigterm_is_killed_after_the_stop_timeout_grandchildren_too(start):
    run = start({"stubborn": "stubborn", "web": "serve web"}, "--stop-timeout", "1")
    stubborn, web = run.ready_pid("stubborn"), run.ready_pid("web")
    grandchild = int(run.line(r"grandchild (\d+)").group(1))
    began = time.monotonic()

    run.process.send_signal(signal.SIGTERM)

    assert run.wait() == 143
    assert time.monotonic() - began < 4
    run.line(rf"sending SIGTERM to stubborn \(pid {stubborn}\)")
    run.line(rf"sending SIGKILL to stubborn \(pid {stubborn}\): still running after 1\.\d s")
    assert not alive(stubborn) and not alive(grandchild) and not alive(web)


@pytest.mark.slow
def test_a_process_still_waiting_its_turn_when_time_runs_out_gets_sigterm_before_sigkill(start):
    run = start({"web": "polite web", "stubborn": "stubborn"}, "--stop-timeout", "0.5")
    web = run.ready_pid("web")
    run.ready_pid("stubborn")

    run.process.send_signal(signal.SIGTERM)

    assert run.wait() == 143
    run.line(rf"sending SIGTERM to web \(pid {web}\): the stop in turn ran out of time")
    run.line(r"web +\| web got SIGTERM")
    assert not run.matches(r"sending SIGKILL to web")


@pytest.mark.slow
def test_a_second_ctrl_c_kills_everything_at_once(start):
    run = start({"stubborn": "stubborn"}, "--stop-timeout", "30")
    stubborn = run.ready_pid("stubborn")
    run.ctrl_c()
    run.line(r"sending SIGTERM to stubborn")
    time.sleep(0.6)  # a second SIGINT sooner than 0.5 s is taken for a copy of the first

    run.ctrl_c()

    assert run.wait(timeout=5) == 130
    run.line(rf"sending SIGKILL to stubborn \(pid {stubborn}\): on a second Ctrl-C")
    assert not alive(stubborn)


@pytest.mark.slow
def test_the_runners_a_killed_agent_left_behind_run_on_and_are_stopped_with_the_rest(start):
    """Like the agent's flow runners, which lead process groups of their own."""
    run = start({"web": "serve web", "agent": "spawner agent"}, "--backoff-initial", "0.1")
    agent = run.ready_pid("agent")
    runner = int(run.line(r"runner (\d+)").group(1))

    os.kill(agent, signal.SIGKILL)
    run.line(r"agent exited with signal 9")
    new_runner = int(run.line(rf"runner (?!{runner}\b)(\d+)").group(1))

    # The orphaned runner goes on with its run (it reports for itself), now the supervisor's child.
    assert alive(runner) and parent_of(runner) == run.process.pid
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 143
    run.line(rf"sending SIGTERM to process group {runner} \(orphaned")
    assert not alive(runner) and not alive(new_runner)


# Output

@pytest.mark.slow
def test_output_lines_are_prefixed_with_the_process_name_aligned_and_plain_when_not_a_tty(start):
    run = start({"web": "serve web", "long-named": "serve long-named"})
    run.ready_pid("web"), run.ready_pid("long-named")
    run.line(r"says hello on stderr")
    run.process.send_signal(signal.SIGTERM)
    run.wait()

    assert run.matches(r"^\d\d:\d\d:\d\d web        \| web ready \d+$")
    assert run.matches(r"^\d\d:\d\d:\d\d long-named \| long-named says hello on stderr$")
    assert run.matches(r"^\d\d:\d\d:\d\d system     \| web started \(pid=\d+\)$")
    assert "\x1b[" not in run.output


@pytest.mark.slow
def test_prefixes_are_coloured_on_a_terminal(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"web: {sys.executable} {STANDIN} serve web\n")
    controller, terminal = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "supervise", "-f", str(procfile)], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=terminal, stderr=terminal,
                               stdin=subprocess.DEVNULL)
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 10
        while b"web ready" not in seen and time.monotonic() < deadline:
            seen += os.read(controller, 4096)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        os.close(controller)
    assert re.search(rb"\x1b\[0m\x1b\[36m\d\d:\d\d:\d\d web    \| \x1b\[0mweb ready", seen), seen


# The parts, without processes

def test_backoff_doubles_up_to_its_maximum_and_starts_over_after_a_long_enough_run():
    backoff = Backoff(initial=1, maximum=30, reset_after=60)
    assert [backoff.after_exit(uptime=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.exits_in_a_row == 7
    assert backoff.after_exit(uptime=59) == 30
    assert backoff.after_exit(uptime=61) == 1  # it stayed up: a fresh failure
    assert backoff.after_exit(uptime=0.1) == 2
    many = Backoff(initial=1, maximum=30)
    assert [many.after_exit(0) for _ in range(2000)][-1] == 30  # no overflow after many exits


def test_exits_are_described_by_code_or_by_signal_name():
    assert describe_exit(0) == "code 0"
    assert describe_exit(3) == "code 3"
    assert describe_exit(-9) == "signal 9 (SIGKILL)"
    assert describe_exit(-15) == "signal 15 (SIGTERM)"


@pytest.mark.parametrize("line, execs", [
    (".venv/bin/uvicorn orchestrator.asgi:application --port 8000", True),
    ('python -c "import os; print(1)"', True),  # a ; inside quotes is not a list
    ("gunicorn -b :${PORT:-8000} app > web.log 2>&1", True),
    ("exec celery worker", False),  # already does
    ("cd app && celery worker", False),
    ("celery worker | tee log", False),
    ("sleep 1; celery worker", False),
    ("FOO=1 celery worker", False),
    ("(celery worker)", False),
])
def test_a_simple_procfile_line_is_execed_so_its_own_exit_and_signals_are_seen(line, execs):
    argv = shell_argv(line)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[2] == (f"exec {line}" if execs else line)


def test_a_missing_or_empty_procfile_is_an_error_with_exit_code_2(tmp_path, capsys):
    assert main(["-f", str(tmp_path / "nope")]) == 2
    (tmp_path / "Procfile").write_text("# nothing here\n")
    assert main(["-f", str(tmp_path / "Procfile")]) == 2
    assert "has no process lines" in capsys.readouterr().err


def test_every_line_of_the_project_procfile_is_one_program_that_the_supervisor_watches_directly():
    from honcho.environ import parse_procfile

    processes = parse_procfile((ROOT / "Procfile").read_text()).processes
    assert list(processes) == ["web", "worker", "agent"]  # beat is a thread of the worker (--beat-thread)
    assert all(shell_argv(command)[2] == f"exec {command}" for command in processes.values())


@pytest.mark.parametrize("port", [None, "18123"])
def test_the_web_process_and_the_local_agent_follow_PORT(port):
    """Issue 16: with 8000 fixed, the agent would send its key to whatever owns 8000. As the
    supervisor runs them (sh -c), both lines name the same port: PORT, else 8000."""
    from honcho.environ import parse_procfile

    processes = parse_procfile((ROOT / "Procfile").read_text()).processes
    env = {"PATH": os.environ["PATH"], **({"PORT": port} if port else {})}
    expanded = {name: subprocess.run(["/bin/sh", "-c", f"echo {processes[name]}"], env=env, capture_output=True,
                                     text=True, check=True).stdout for name in ("web", "agent")}
    wanted = port or "8000"
    assert f"--port {wanted} " in expanded["web"]
    assert f"--api http://127.0.0.1:{wanted}/api/" in expanded["agent"]
