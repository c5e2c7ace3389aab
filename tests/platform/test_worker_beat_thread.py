"""`make run`'s worker is also its beat (`--beat-thread`, orchestrator/celery.py): one process, no
separate beat, and the services still run (issue 16: idle memory of web + worker + beat).

The worker is started exactly as the Procfile says (through sh -c, as the supervisor runs it) on a
SQLite file of its own, and must record service passes that only a beat could have triggered.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def procfile():
    from honcho.environ import parse_procfile

    return parse_procfile((ROOT / "Procfile").read_text()).processes


def children(pid):
    """The pids of `pid`'s child processes (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def passes(db):
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute(
                "SELECT service, count(*) FROM services_servicepass WHERE ok GROUP BY service").fetchall()
    except sqlite3.OperationalError:  # the table is created by migrate; a locked file is retried
        return []


def test_the_procfile_runs_beat_inside_the_worker_and_no_beat_process():
    processes = procfile()
    assert "beat" not in processes
    assert "--beat-thread" in processes["worker"].split()
    assert " -B" not in processes["worker"] and "--beat " not in processes["worker"]


@pytest.mark.slow
def test_the_procfile_worker_alone_triggers_service_passes_from_its_beat_thread(tmp_path):
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(DEBUG="true", ORCHESTRATOR_VAR_DIR=str(var), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               DJANGO_SETTINGS_MODULE="orchestrator.settings")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    db = var / "orchestrator.sqlite3"
    assert passes(db) == []
    # The Procfile's line, run as the supervisor runs it, from a folder whose .venv is this interpreter's.
    (tmp_path / ".venv").symlink_to(sys.prefix)
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(["/bin/sh", "-c", f"exec {procfile()['worker']}"], cwd=tmp_path, env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "event-persister" not in dict(passes(db)):
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        done = dict(passes(db))
        assert "event-persister" in done, f"no service pass within 30 s; the worker said:\n{log.read_text()[-3000:]}"
        # Beat is a thread: the worker (a threads pool) has no child process, beat or other.
        assert children(worker.pid) == []
        # With the project's scheduler, which applies the services' intervals first.
        assert "Service intervals from the environment" in log.read_text()
        # And it keeps beating: the 1 s persister passes again.
        first = done["event-persister"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and dict(passes(db)).get("event-persister", 0) <= first:
            time.sleep(0.5)
        assert dict(passes(db))["event-persister"] > first
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    # A warm shutdown stops the beat thread with the worker.
    assert worker.returncode == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("options, refusal", [
    (["--pool", "threads", "-B"], "--beat-thread and -B/--beat both start a beat"),
    (["--pool", "prefork", "--concurrency", "1"], "--beat-thread needs --pool threads or solo"),
])
def test_beat_thread_is_refused_beside_a_beat_process_or_a_forking_pool(tmp_path, options, refusal):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(DEBUG="true", ORCHESTRATOR_VAR_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "orchestrator", "worker", "--beat-thread", *options],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert refusal in result.stdout + result.stderr
