"""The events' settings refuse values that would make the server misjudge queues or never stream."""

import pytest

from tests.platform.test_health_and_settings import _settings_in_subprocess


@pytest.mark.parametrize("env, named", [
    ({"ORCHESTRATOR_EVENTS_QUEUE_POLLED_EVERY_SECONDS": "300"}, "ORCHESTRATOR_EVENTS_QUEUE_POLLED_EVERY_SECONDS"),
    ({"ORCHESTRATOR_EVENTS_QUEUE_POLLED_EVERY_SECONDS": "0"}, "ORCHESTRATOR_EVENTS_QUEUE_POLLED_EVERY_SECONDS"),
    ({"ORCHESTRATOR_EVENTS_STREAM_MAX_SECONDS": "0"}, "ORCHESTRATOR_EVENTS_STREAM_MAX_SECONDS"),
    ({"ORCHESTRATOR_EVENTS_STREAM_POLL_SECONDS": "-1"}, "ORCHESTRATOR_EVENTS_STREAM_POLL_SECONDS"),
])
def test_settings_that_cannot_work_are_refused_at_start(tmp_path, env, named):
    result = _settings_in_subprocess({"DEBUG": "true", "ORCHESTRATOR_VAR_DIR": str(tmp_path), **env},
                                     "settings.ORCHESTRATOR")
    assert result.returncode != 0 and named in result.stderr


def test_the_defaults_are_accepted(tmp_path):
    result = _settings_in_subprocess({"DEBUG": "true", "ORCHESTRATOR_VAR_DIR": str(tmp_path)},
                                     "settings.ORCHESTRATOR['EVENTS_QUEUE_POLLED_EVERY_SECONDS'], "
                                     "settings.ORCHESTRATOR['WORK_QUEUE_HEALTH_POLL_SECONDS']")
    assert result.returncode == 0 and result.stdout.strip() == "60 300"
