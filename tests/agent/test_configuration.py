"""The agent's command line and environment: bad values are refused at start, naming the variable."""

import pytest

from agent.__main__ import build_parser


def parse(monkeypatch, *argv, **env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return build_parser().parse_args(["start", *argv])


@pytest.mark.parametrize("variable, value", [
    ("ORCHESTRATOR_AGENT_QUERY_SECONDS", "0"),  # a poll loop without a pause
    ("ORCHESTRATOR_AGENT_HEARTBEAT_SECONDS", "-1"),
    ("ORCHESTRATOR_AGENT_HEARTBEAT_SECONDS", "nan"),
    ("ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS", "100000"),  # over the server's bound: every RUNNING report refused
    ("ORCHESTRATOR_AGENT_LIMIT", "0"),
    ("ORCHESTRATOR_AGENT_LIMIT", "many"),
    ("ORCHESTRATOR_AGENT_GRACE_SECONDS", "inf"),
    ("ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS", "-5"),
    ("ORCHESTRATOR_AGENT_WEBSERVER_PORT", "70000"),
])
def test_an_out_of_bounds_variable_is_refused_at_start_naming_it(monkeypatch, capsys, variable, value):
    with pytest.raises(SystemExit) as stopped:
        parse(monkeypatch, **{variable: value})
    assert stopped.value.code == 2
    assert variable in capsys.readouterr().err


def test_flags_are_bounded_like_their_variables(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse(monkeypatch, "--query-seconds", "0.01")
    assert "ORCHESTRATOR_AGENT_QUERY_SECONDS" in capsys.readouterr().err


def test_defaults_and_the_values_that_turn_things_off_are_accepted(monkeypatch):
    args = parse(monkeypatch)
    assert (args.query_seconds, args.heartbeat_seconds, args.runner_heartbeat_seconds, args.limit) == (10, 30, 30, 8)
    args = parse(monkeypatch, ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS="0", ORCHESTRATOR_AGENT_WEBSERVER_PORT="-1",
                 ORCHESTRATOR_AGENT_QUERY_SECONDS="0.3", ORCHESTRATOR_AGENT_GRACE_SECONDS="0")
    assert (args.runner_heartbeat_seconds, args.webserver_port, args.query_seconds, args.grace_seconds) == (
        0, -1, 0.3, 0)
