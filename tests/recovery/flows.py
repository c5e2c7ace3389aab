"""Flows the fault test gives real agents (imported by the agent's flow subprocess)."""

import time
from pathlib import Path

from agent import flow, task


@task
def long_step(seconds):
    time.sleep(seconds)


@task
def quick_step():
    return "done"


@flow
def resumable(marker, seconds=600):
    """First attempt: leaves a marker and works for a long time. A later attempt finishes quickly."""
    path = Path(marker)
    if not path.exists():
        path.write_text("started")
        long_step(seconds)
    return quick_step()
