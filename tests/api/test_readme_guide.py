"""The README's curl guide, run as written against a live server: if it breaks, this fails.

One substitution: the live server's address for 127.0.0.1:8000. The key line runs as written in a
shell with a clean environment, pointed at the test database (on SQLite its file, tests/conftest.py).
"""

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from runs.models import Account, ApiKey, FlowRun, Role, Schedule, ScheduleStatus, Workspace

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
KEY_LINE = re.compile(r"^KEY=\$\(((?:\w+=\S+ )*)\.venv/bin/python manage\.py (create_api_key .*)\)$", re.M)


def guide():
    text = README.read_text()
    start = text.index("```sh\n# 1. a first key")
    return text[start + len("```sh\n"):text.index("```", start + 6)]


@pytest.fixture
def demo(transactional_db):
    account = Account.objects.create(name="Demo", slug="demo")
    return Workspace.objects.create(account=account, name="Demo", slug="demo")


def issue_key(command_line):
    name, *args = command_line.split()
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip()


def run_key_line(line):
    """The guide's key line in a shell that has only what a person's shell has, plus the database."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        database = {"DATABASE_URL": url}
    else:
        database = {"ORCHESTRATOR_SQLITE_PATH": str(db["NAME"])}
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **database}
    done = subprocess.run(["bash", "-euc", f"{line}\necho \"$KEY\""], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the guide is written for curl; install curl")
def test_the_readme_curl_guide_works_as_written(live_server, demo):
    script = guide()
    command = KEY_LINE.search(script)
    assert command, "the guide's first step must issue a key with manage.py create_api_key"
    key = run_key_line(command.group(0))
    script = script.replace(command.group(0), f"KEY={key}")
    script = script.replace("http://127.0.0.1:8000", live_server.url)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    schedule = Schedule.objects.get(flow__workspace=demo, flow__name="etl", slug="hourly")
    assert schedule.status == ScheduleStatus.ACTIVE
    assert FlowRun.objects.filter(schedule=schedule, state="SCHEDULED").count() == 10
    assert '"runs_deleted":10' in done.stdout and '"runs_created":10' in done.stdout
    assert ApiKey.objects.get(workspace=demo, name="ci").role == Role.OPERATOR
    # The last step again: the same idempotency key gives the same run, not a second one.
    lines = script.strip().splitlines()
    setup = lines[:next(i for i, line in enumerate(lines) if line.startswith("B=")) + 1]
    again = subprocess.run(["bash", "-euc", "\n".join(setup + lines[-1:])], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert FlowRun.objects.filter(workspace=demo, idempotency_key="build-42").count() == 1


def test_create_api_key_prints_only_a_working_secret(demo):
    secret = issue_key("create_api_key demo/demo --name ops --role viewer --expires-in-days 30")
    key = ApiKey.objects.get(workspace=demo, name="ops")
    assert secret.startswith(key.prefix) and key.role == Role.VIEWER and key.expires_at is not None
    assert ApiKey.objects.usable().filter(pk=key.pk).exists()


@pytest.mark.parametrize("line", ["create_api_key nowhere/demo --name x", "create_api_key demo --name x",
                                  "create_api_key demo/demo --name x --expires-in-days 0"])
def test_create_api_key_refuses_unknown_workspaces_and_bad_expiry(demo, line):
    with pytest.raises(CommandError):
        issue_key(line)
    assert not ApiKey.objects.filter(name="x").exists()
