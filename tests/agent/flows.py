"""Flows the end-to-end tests give the agent to run (imported by the agent's subprocess)."""

import logging
import time

from agent import flow, task

attempts = {"flaky": 0}


@task
def wait(seconds):
    time.sleep(seconds)
    return seconds


@task(retries=2, retry_delay_seconds=0)
def flaky():
    attempts["flaky"] += 1
    if attempts["flaky"] == 1:
        raise RuntimeError("first attempt fails")
    return attempts["flaky"]


@task
def shout(text):
    logging.getLogger("tests.flows").warning("shouting %s", text)
    return text.upper()


@flow
def steady(seconds=1.2):
    """Long enough for several heartbeats; one task retries once."""
    waited = wait(seconds)
    tries = flaky()
    print(f"waited {waited}, flaky took {tries} attempts")
    return shout("done")


@flow
def noop():
    return None


@flow
def broken():
    raise ValueError("this flow is broken on purpose")


@flow
def forever():
    wait(600)
