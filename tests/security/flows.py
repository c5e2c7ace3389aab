"""Flows the security tests give a real agent (imported by its runner subprocess)."""

import os
from pathlib import Path

from agent import flow


@flow
def reads_its_agents_environment(path):
    """What a flow can read of its agent's process: /proc/<agent pid>/environ (same user)."""
    agent_pid = os.environ.get("ORCHESTRATOR_AGENT_PID") or str(os.getppid())
    try:
        held = Path(f"/proc/{agent_pid}/environ").read_bytes().decode(errors="replace")
    except OSError as exc:
        held = f"unreadable: {exc}"
    Path(path).write_text(held)


@flow
def returns_a_connection_config():
    """Returns its config, password included: the runner logs `Flow returned %.500r`."""
    return {"dsn": "postgres://app@db/app", "password": os.environ["DB_PASSWORD"]}
