"""LOG_FORMAT=json: every log line is one JSON object a log shipper can read."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import logging
import django
django.setup()
logging.getLogger("runs.example").warning("the disk is %s full", "90%")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("services.towel").exception("pass failed")
"""


def run(log_format):
    env = {**os.environ, "DEBUG": "true", "DJANGO_SETTINGS_MODULE": "orchestrator.settings", "LOG_FORMAT": log_format}
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_json_lines_carry_time_level_logger_message_and_traceback():
    done = run("json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    warning = next(line for line in lines if line["logger"] == "runs.example")
    assert (warning["level"], warning["message"]) == ("WARNING", "the disk is 90% full") and warning["time"]
    failure = next(line for line in lines if line["logger"] == "services.towel")
    assert failure["level"] == "ERROR" and "ZeroDivisionError" in failure["exc_info"]


def test_plain_is_the_default_and_a_bad_format_is_refused_by_name():
    plain = run("plain")
    assert plain.returncode == 0 and "WARNING runs.example: the disk is 90% full" in plain.stderr
    bad = run("xml")
    assert bad.returncode != 0 and "LOG_FORMAT must be plain or json" in bad.stderr
