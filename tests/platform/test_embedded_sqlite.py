"""The embedded mode: web, worker and beat writing one SQLite file at once never see "database is locked"."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WRITER = r"""
import os, sys, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
django.setup()
from django.utils import timezone
from runs.models import Actor, Flow, Schedule, State
from runs.scheduling import create_manual_run, schedule_future_runs
from runs.states import set_flow_run_state
flow = Flow.objects.get(name="hello-orchestrator")
for i in range(int(sys.argv[1])):
    run, _ = create_manual_run(flow, name=f"w{os.getpid()}-{i}")
    run = set_flow_run_state(run, State.RUNNING, actor=Actor.AGENT)
    set_flow_run_state(run, State.COMPLETED, actor=Actor.AGENT)
    schedule_future_runs(list(Schedule.objects.select_related("flow")), timezone.now())  # as beat's scheduler
print("ok")
"""


@pytest.mark.slow
def test_four_processes_write_one_sqlite_file_without_lock_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(DEBUG="true", ORCHESTRATOR_VAR_DIR=str(tmp_path), ORCHESTRATOR_ADMIN_PASSWORD="x-test-pass-1")
    manage = [sys.executable, "manage.py"]
    subprocess.run(manage + ["migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run(manage + ["seed_demo"], cwd=ROOT, env=env, check=True, capture_output=True)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, "40"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [w.communicate(timeout=240) for w in writers]
    for (out, err), writer in zip(results, writers):
        assert writer.returncode == 0 and out.strip() == "ok", err[-2000:]
        assert "database is locked" not in err
    count = subprocess.run(
        manage + ["shell", "-c", "from runs.models import FlowRun; print(FlowRun.objects.filter(state='COMPLETED').count())"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )
    assert count.stdout.strip().splitlines()[-1] == "160"
