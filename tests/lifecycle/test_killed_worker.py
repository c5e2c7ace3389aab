"""A Celery worker killed (SIGKILL) half-way through deleting a flow: the deletion-jobs service hands
the job on once its lease ran out, and the new worker finishes it; every row of the flow is gone and
nothing else was touched. Embedded mode (SQLite file + filesystem broker) or PostgreSQL + Redis."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = [sys.executable, str(Path(__file__).with_name("deletion_scenario.py"))]
RUNS = 3000


@pytest.fixture
def environment(tmp_path, transactional_db):
    """The environment of the processes, and a reader of the job's progress. On PostgreSQL they
    share the test database (committed data: a transactional test); on SQLite they share a file of
    their own, which they migrate first."""
    env = {**os.environ, "DEBUG": "true", "ORCHESTRATOR_VAR_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "LOG_LEVEL": "WARNING", "ORCHESTRATOR_DELETION_BATCH_SIZE": "5"}
    if connection.vendor == "postgresql":
        db = connection.settings_dict  # the test database's name, not the configured one
        env["DATABASE_URL"] = (f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:"
                               f"{db['PORT'] or 5432}/{db['NAME']}")

        def progress():
            from runs.models import DeletionJob

            return DeletionJob.objects.values_list("state", "runs_deleted").first()
    else:
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        database = tmp_path / "orchestrator.sqlite3"

        def progress():
            with sqlite3.connect(database, timeout=20) as db:
                return db.execute("SELECT state, runs_deleted FROM runs_deletionjob").fetchone()
    return env, progress


def step(env, *args):
    done = subprocess.run(SCENARIO + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_worker_killed_mid_deletion_is_resumed_and_every_row_of_the_flow_goes(environment, tmp_path):
    env, progress = environment
    step(env, "seed", RUNS)
    before = step(env, "counts")
    assert before["doomed"]["runs"] == RUNS
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "orchestrator", "worker", "--pool", "solo", "--without-heartbeat",
         "--without-gossip", "--without-mingle", "--loglevel", "WARNING", "-n", "doomed@%h"],
        cwd=ROOT, env=env, stdout=(tmp_path / "worker.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        step(env, "request")
        deadline = time.monotonic() + 120
        while True:
            state, deleted = progress() or (None, 0)
            if deleted >= 200:
                break
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    state, deleted = progress()
    assert state == "RUNNING" and 200 <= deleted < RUNS, (state, deleted)
    halfway = step(env, "counts")
    assert 0 < halfway["doomed"]["runs"] < RUNS and halfway["doomed"]["runs"] == RUNS - deleted

    # Within its lease nobody takes it; past it the service hands it on (tasks run inline here).
    env_inline = {**env, "CELERY_TASK_ALWAYS_EAGER": "true"}
    assert step(env_inline, "resume", 0) == {"jobs_resumed": 0}
    assert step(env_inline, "resume", settings.ORCHESTRATOR["DELETION_LEASE_SECONDS"] + 5) == {"jobs_resumed": 1}
    after = step(env, "counts")
    assert after["doomed"] == {"runs": 0, "task_runs": 0, "history": 0, "logs": 0, "flow": 0}
    assert after["kept"] == before["kept"] and after["all_runs"] == before["kept"]["runs"]
    # Every run counted once, across the two workers: 3000 × (run, task run, 2 history rows, 2 logs) + flow.
    assert after["job"] == {"state": "DONE", "runs_deleted": RUNS, "rows_deleted": RUNS * 6 + 1, "attempts": 2}
