"""/healthz, settings from the environment, the beat rows, the seed command."""

import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from runs.models import Flow, FlowRun, Membership, Schedule, Workspace
from services import registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_healthz_is_200_when_database_and_broker_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok" and body["database"]["ok"] and body["broker"]["ok"]


@pytest.mark.django_db
def test_healthz_is_503_when_the_database_is_down(client):
    with mock.patch("orchestrator.health.database_status", return_value={"ok": False, "error": "refused"}):
        response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


@pytest.mark.django_db
def test_healthz_is_503_when_the_broker_is_down(client, settings):
    if settings.REDIS_URL:
        settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    else:
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": "/nonexistent/broker"}
    response = client.get("/healthz")
    assert response.status_code == 503 and not response.json()["broker"]["ok"]


def _settings_in_subprocess(env, expr):
    code = f"import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE','orchestrator.settings'); " \
           f"from django.conf import settings; print({expr})"
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL"}}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True)


def test_secret_key_is_required_when_debug_is_off(tmp_path):
    result = _settings_in_subprocess({"DEBUG": "false", "ORCHESTRATOR_VAR_DIR": str(tmp_path)}, "settings.SECRET_KEY")
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


def test_secret_key_is_generated_once_in_debug(tmp_path):
    env = {"DEBUG": "true", "ORCHESTRATOR_VAR_DIR": str(tmp_path)}
    first = _settings_in_subprocess(env, "settings.SECRET_KEY")
    second = _settings_in_subprocess(env, "settings.SECRET_KEY")
    assert first.returncode == 0 and first.stdout == second.stdout and len(first.stdout.strip()) > 40
    assert (tmp_path / "secret_key").read_text().strip() == first.stdout.strip()


def test_embedded_defaults_are_sqlite_wal_and_a_filesystem_broker(tmp_path):
    env = {"DEBUG": "true", "ORCHESTRATOR_VAR_DIR": str(tmp_path)}
    result = _settings_in_subprocess(
        env, "settings.DATABASES['default']['ENGINE'], settings.DATABASES['default']['OPTIONS'], "
             "settings.CELERY_BROKER_URL"
    )
    assert "sqlite3" in result.stdout and "journal_mode=WAL" in result.stdout and "IMMEDIATE" in result.stdout
    assert "filesystem://" in result.stdout


def test_database_url_and_redis_url_switch_to_servers(tmp_path):
    env = {"DEBUG": "true", "ORCHESTRATOR_VAR_DIR": str(tmp_path),
           "DATABASE_URL": "postgres://u:p@db.example:5432/orch", "REDIS_URL": "redis://cache:6379/2"}
    result = _settings_in_subprocess(env, "settings.DATABASES['default']['ENGINE'], settings.CELERY_BROKER_URL")
    assert "postgresql" in result.stdout and "redis://cache:6379/2" in result.stdout


def test_every_registered_service_has_a_periodic_task(periodic_tasks):
    names = set(PeriodicTask.objects.filter(task="services.run_service").values_list("name", flat=True))
    assert {f"service: {name}" for name in registry.all_services()} <= names


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_prints_the_login_once(capsys, monkeypatch):
    monkeypatch.delenv("ORCHESTRATOR_ADMIN_PASSWORD", raising=False)
    call_command("seed_demo")
    first = capsys.readouterr().out
    call_command("seed_demo")
    second = capsys.readouterr().out
    assert "password" in first and "password" not in second
    assert Workspace.objects.count() == 1 and Flow.objects.count() == 1 and Schedule.objects.count() == 2
    assert Membership.objects.get().role == "admin"
    assert FlowRun.objects.filter(auto_scheduled=True).count() == 20


@pytest.mark.django_db
def test_models_and_migrations_agree():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_makemigrations_check_runs_in_a_bare_shell(tmp_path):
    """`manage.py makemigrations --check` as a checkout's tooling runs it: no DEBUG, no SECRET_KEY."""
    root = Path(__file__).resolve().parents[2]
    bare = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ORCHESTRATOR_VAR_DIR": str(tmp_path / "var")}
    done = subprocess.run([sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"], cwd=root,
                          env=bare, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.django_db
def test_seed_demo_writes_the_new_login_to_a_private_file_for_make_run(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCHESTRATOR_ADMIN_PASSWORD", raising=False)
    login = tmp_path / "var" / "admin-login.txt"
    out = io.StringIO()
    call_command("seed_demo", "--login-file", str(login), stdout=out)
    password = re.search(r"password (\S+)", out.getvalue()).group(1)
    text = login.read_text()
    assert f"password {password} " in text and "'admin'" in text
    assert stat.S_IMODE(login.stat().st_mode) == 0o600
    assert get_user_model().objects.get(username="admin").check_password(password)
    login.write_text("left alone\n")
    call_command("seed_demo", "--login-file", str(login), stdout=io.StringIO())
    assert login.read_text() == "left alone\n"  # an existing admin's password is not known, nor rewritten
