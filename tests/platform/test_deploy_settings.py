"""Production settings: https, HSTS and secure cookies when DEBUG is off, none of it for `make run`.

The README's "Running in production" block is the environment `manage.py check --deploy` is run
with here, so the README cannot drift from what passes the check.
"""

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from orchestrator import settings as settings_module

ROOT = Path(__file__).resolve().parents[2]
# What any process needs to start, and nothing of the test run's own environment.
BARE = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


def readme_production_environment():
    """The variables of the README's example block, the SECRET_KEY placeholder filled in."""
    section = ROOT.joinpath("README.md").read_text().split("## Running in production", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    env = {}
    for line in block.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            env[name.strip()] = value.strip()
    placeholders = [name for name, value in env.items() if value.startswith("<")]
    assert placeholders == ["SECRET_KEY", "ORCHESTRATOR_SECRETS_KEY"], \
        "only the keys may be placeholders in the README's example"
    env["SECRET_KEY"] = secrets.token_urlsafe(50)
    env["ORCHESTRATOR_SECRETS_KEY"] = Fernet.generate_key().decode()
    return env


def manage(env, *args):
    return subprocess.run([sys.executable, "manage.py", *args], env={**BARE, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def settings_of(env, *names):
    code = ("import os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'orchestrator.settings');"
            "from django.conf import settings;"
            f"print(repr(tuple(getattr(settings, name) for name in {names!r})))")
    result = subprocess.run([sys.executable, "-c", code], env={**BARE, **env}, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)  # noqa: S307 - our own repr of plain values


def test_the_readme_production_environment_passes_check_deploy_without_a_warning():
    env = readme_production_environment()
    assert env["DEBUG"] == "false"
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_with_debug_off_http_redirects_hsts_is_sent_and_cookies_are_https_only():
    env = readme_production_environment()
    assert settings_of(env, "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
                       "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER",
                       "CSRF_TRUSTED_ORIGINS") == (
        True, 31_536_000, True, True, True, ("HTTP_X_FORWARDED_PROTO", "https"), ["https://orchestrator.example.com"])


def test_the_https_settings_come_from_the_environment():
    env = {**readme_production_environment(), "ORCHESTRATOR_SECURE_SSL_REDIRECT": "false",
           "ORCHESTRATOR_HSTS_SECONDS": "3600", "ORCHESTRATOR_HSTS_INCLUDE_SUBDOMAINS": "false",
           "ORCHESTRATOR_HSTS_PRELOAD": "true", "ORCHESTRATOR_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Ssl: on"}
    assert settings_of(env, "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
                       "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER", "SILENCED_SYSTEM_CHECKS") == (
        False, 3600, False, True, ("HTTP_X_FORWARDED_SSL", "on"), [])


def test_make_run_settings_neither_redirect_nor_need_https(tmp_path):
    """`make run` serves http://127.0.0.1:8000 with DEBUG=true: no redirect, no HSTS, cookies over http."""
    env = {"DEBUG": "true", "ORCHESTRATOR_VAR_DIR": str(tmp_path)}
    assert settings_of(env, "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SESSION_COOKIE_SECURE",
                       "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER") == (False, 0, False, False, None)


@pytest.mark.django_db
def test_the_development_server_answers_plain_http(client):
    response = client.get("/dashboard/login/")
    assert response.status_code == 200 and "Strict-Transport-Security" not in response
    assert not response.cookies["csrftoken"]["secure"]


HTTPS_SETTINGS = ("SECURE_SSL_REDIRECT", "SECURE_REDIRECT_EXEMPT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
                  "SECURE_PROXY_SSL_HEADER")


@pytest.fixture(scope="module")
def production_https_values():
    return dict(zip(HTTPS_SETTINGS, settings_of(readme_production_environment(), *HTTPS_SETTINGS)))


@pytest.fixture
def production_https(settings, production_https_values):
    """This test server with the https settings the README's production environment gives."""
    for name, value in production_https_values.items():
        setattr(settings, name, value)


@pytest.mark.django_db
def test_in_production_http_is_redirected_but_healthz_answers_load_balancers(client, production_https):
    response = client.get("/dashboard/login/")
    assert response.status_code == 301 and response["Location"] == "https://testserver/dashboard/login/"
    assert client.get("/healthz").status_code in (200, 503)  # an answer, not a redirect


@pytest.mark.django_db
def test_in_production_the_proxys_https_header_is_believed_and_hsts_sent(client, production_https):
    response = client.get("/dashboard/login/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@pytest.mark.parametrize("value, header", [
    ("", None),
    ("X-Forwarded-Proto", ("HTTP_X_FORWARDED_PROTO", "https")),
    ("X-Forwarded-Ssl: on", ("HTTP_X_FORWARDED_SSL", "on")),
])
def test_a_proxy_https_header_is_believed_only_when_configured(monkeypatch, value, header):
    monkeypatch.setenv("ORCHESTRATOR_SECURE_PROXY_SSL_HEADER", value)
    assert settings_module._proxy_ssl_header() == header


@pytest.mark.parametrize("value", ["X Forwarded Proto", ": https", "X-Forwarded-Proto/1"])
def test_a_bad_proxy_https_header_stops_the_start_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("ORCHESTRATOR_SECURE_PROXY_SSL_HEADER", value)
    with pytest.raises(settings_module.BadEnvironment, match="ORCHESTRATOR_SECURE_PROXY_SSL_HEADER"):
        settings_module._proxy_ssl_header()


def test_a_bad_throttle_rate_stops_the_start_naming_the_variable(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import orchestrator.settings"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120,
                            env={**BARE, "DEBUG": "true", "ORCHESTRATOR_VAR_DIR": str(tmp_path),
                                 "ORCHESTRATOR_THROTTLE_FAILED_LOGIN_RATE": "30 an hour"})
    assert result.returncode != 0 and "ORCHESTRATOR_THROTTLE_FAILED_LOGIN_RATE" in result.stderr


@pytest.mark.parametrize("value, ok", [("11", False), ("-1", False), ("0", True), ("2.5", True)])
def test_heartbeats_written_behind_by_more_than_ten_seconds_are_refused(value, ok):
    """A beat later than a third of the agents' default 30 s interval would eat into the missed beats
    the recovery services wait for (runs/beats_behind.py)."""
    code = "import os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'orchestrator.settings'); import django; django.setup()"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**BARE, "DEBUG": "true", "ORCHESTRATOR_HEARTBEAT_WRITE_BEHIND_SECONDS": value})
    assert (result.returncode == 0) == ok, result.stderr[-500:]
    if not ok:
        assert "ORCHESTRATOR_HEARTBEAT_WRITE_BEHIND_SECONDS must be 0..10" in result.stderr
