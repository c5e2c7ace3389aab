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


RUN_ID = "6f1c8a52-3d1e-4c59-9b8e-0e6a1f0b7c11"


@pytest.mark.parametrize("raw", [
    {"flow_run_id": RUN_ID, "message": "plain"},
    {"flow_run_id": RUN_ID, "message": "", "level": 50, "task_run_id": None},
    {"flow_run_id": RUN_ID, "message": "t", "task_run_id": RUN_ID, "timestamp": "2026-12-01T10:00:05.123456+02:00"},
    {"flow_run_id": RUN_ID, "message": "z", "timestamp": "2026-12-01T10:00:05Z", "extra": [1]},
    {"flow_run_id": RUN_ID.upper().replace("-", ""), "message": "hex"},
    {"flow_run_id": RUN_ID, "message": "naive time", "timestamp": "2026-12-01T10:00:05"},
    {"flow_run_id": RUN_ID, "message": "level as text", "level": "30"},
    {"flow_run_id": RUN_ID, "message": 42},
    {"flow_run_id": RUN_ID, "message": True},
    {"flow_run_id": RUN_ID, "message": None},
    {"flow_run_id": RUN_ID, "message": "bad level", "level": 25},
    {"flow_run_id": RUN_ID, "message": "bool level", "level": True},
    {"flow_run_id": RUN_ID, "message": "bad time", "timestamp": "yesterday"},
    {"flow_run_id": RUN_ID, "message": "bad time", "timestamp": "2026-13-01T10:00:05Z"},
    {"flow_run_id": "nope", "message": "x"},
    {"flow_run_id": 12, "message": "x"},
    {"message": "no run"},
    {"flow_run_id": RUN_ID},
    {"flow_run_id": RUN_ID, "message": "x", "task_run_id": "nope"},
    "not a line",
    None,
])
def test_the_fast_line_check_takes_and_refuses_exactly_what_the_serializer_does(raw, settings):
    """valid_log_line's fast path must agree with LogLine on every line: same values, same refusals."""
    from runs.api.agent_payloads import LogLine, valid_log_line

    data, problems = valid_log_line(raw)
    line = LogLine(data=raw)
    if line.is_valid():
        assert problems is None
        expected = dict(line.validated_data)
        assert {k: v for k, v in data.items() if k != "timestamp"} == \
            {k: v for k, v in expected.items() if k != "timestamp"}
        assert data.get("timestamp") == expected.get("timestamp")  # the same instant
    else:
        assert data is None and problems
