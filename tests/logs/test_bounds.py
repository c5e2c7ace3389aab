"""Bounded log posts: a line's length, a batch's lines and bytes, each refused naming what to change."""

import pytest

from runs.models import Log, State
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(ws):
    return factories.flow_run(factories.flow(ws), state=State.RUNNING)


def test_a_line_over_the_length_limit_is_refused_alone_naming_message(reporter, prefix, run, settings, flush_logs):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AGENT_LOG_LINE_MAX_CHARS": 100}
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": [
        {"flow_run_id": str(run.pk), "message": "x" * 101},
        {"flow_run_id": str(run.pk), "message": "y" * 100},
    ]}, format="json")
    assert answer.status_code == 201
    body = answer.json()
    assert body["stored"] == 1 and [r["index"] for r in body["refused"]] == [0]
    assert body["refused"][0]["reason"].startswith("message: At most 100 characters")
    flush_logs()
    assert list(Log.objects.values_list("message", flat=True)) == ["y" * 100]


def test_a_batch_of_only_overlong_lines_is_a_400_naming_the_line(reporter, prefix, run, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AGENT_LOG_LINE_MAX_CHARS": 10}
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(run.pk), "message": "z" * 11}]},
                           format="json")
    assert answer.status_code == 400
    assert answer.json()["error"]["fields"]["logs"][0].startswith("line 0: message: At most 10 characters")


def test_too_many_lines_is_a_400_naming_logs(reporter, prefix, run, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AGENT_LOG_BATCH_MAX_LINES": 3}
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(run.pk), "message": "m"}] * 4},
                           format="json")
    assert answer.status_code == 400 and list(answer.json()["error"]["fields"]) == ["logs"]


def test_a_body_over_the_byte_limit_is_a_413(reporter, prefix, run, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AGENT_LOG_BATCH_MAX_BYTES": 1000}
    answer = reporter.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(run.pk), "message": "m" * 2000}]},
                           format="json")
    assert answer.status_code == 413
    assert "1000 bytes" in answer.json()["error"]["message"]
