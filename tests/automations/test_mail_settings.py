"""Automations' e-mail goes through Django's mail settings, read from the environment: the console
without EMAIL_HOST (development), SMTP with it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BARE = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "DEBUG": "true"}
NAMES = ("EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER", "EMAIL_USE_TLS", "DEFAULT_FROM_EMAIL")


def settings_of(env):
    code = ("import os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'orchestrator.settings');"
            "from django.conf import settings;"
            f"print(repr(tuple(getattr(settings, name) for name in {NAMES!r})))")
    result = subprocess.run([sys.executable, "-c", code], env={**BARE, **env}, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return dict(zip(NAMES, eval(result.stdout)))  # noqa: S307 - our own repr of plain values


def test_without_a_mail_host_mail_goes_to_the_console():
    values = settings_of({})
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"
    assert values["DEFAULT_FROM_EMAIL"] == "orchestrator@localhost"


def test_a_mail_host_switches_to_smtp_with_its_settings():
    values = settings_of({"EMAIL_HOST": "smtp.example.com", "EMAIL_PORT": "465", "EMAIL_HOST_USER": "bot",
                          "EMAIL_USE_TLS": "false", "DEFAULT_FROM_EMAIL": "orchestrator@example.com"})
    assert values == {"EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend", "EMAIL_HOST": "smtp.example.com",
                      "EMAIL_PORT": 465, "EMAIL_HOST_USER": "bot", "EMAIL_USE_TLS": False,
                      "DEFAULT_FROM_EMAIL": "orchestrator@example.com"}
