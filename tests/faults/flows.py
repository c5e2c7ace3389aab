"""Flows the fault tests give real agents (imported by the runner processes)."""

import os
import time
from pathlib import Path

from agent import flow, task


@task
def step(marker_dir, name, seconds):
    """Writes `start` and `end` lines to a file of its own, so a test counts real executions."""
    marker = Path(marker_dir) / f"{os.environ['ORCHESTRATOR_FLOW_RUN_ID']}-{name}"
    with marker.open("a") as out:
        out.write("start\n")
    time.sleep(seconds)
    with marker.open("a") as out:
        out.write("end\n")
    return name


@flow
def three_steps(marker_dir, seconds=2.0):
    return [step(marker_dir, name, seconds) for name in ("extract", "transform", "load")]
