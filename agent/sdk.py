"""`@flow` and `@task`: report task runs when running under the agent, run plainly otherwise.

Under the agent, `agent.runner` binds a RunContext before calling the flow. Each task call
creates (or finds) its task run, moves it to RUNNING, keeps it in the heartbeats, and ends it
COMPLETED (with its result, when JSON can hold it) or FAILED; with `retries=` a failed attempt
goes back to SCHEDULED and runs again after `retry_delay_seconds`. Tasks run when called, so a
task that takes another's result waits for it.

A task run that COMPLETED in an earlier attempt of the flow run (before Lazarus rescheduled it,
say) is not run again: the server answers it with its stored result, which the call returns.
"""

import contextvars
import functools
import json
import logging
import time

from .client import ApiError
from .logs import redact, redaction_list, storable

_context = None
_current_task_run = contextvars.ContextVar("current_task_run", default=None)
log = logging.getLogger("agent.tasks")

# How long a report waits for a server that is away (seconds) before giving up. One window for the
# agent's side: a task's state reports, the runner's last log lines and its run's final state
# (agent/runner.py), and the agent's own state reports (agent/worker.py).
STATE_REPORT_RETRY_SECONDS = 600
# The longest state message the server takes.
MAX_MESSAGE_CHARS = 10000
# The server's ORCHESTRATOR_TASK_RESULT_MAX_BYTES, unless the agent says otherwise.
DEFAULT_RESULT_MAX_BYTES = 1_048_576


class FlowRunStopped(BaseException):
    """Raised in the flow's main thread when the run is stopped from outside (SIGTERM, a cancellation).

    A BaseException, so that `except Exception` in a flow does not swallow it and its `finally`
    blocks run.
    """


class RunContext:
    """What the SDK needs to report: the client, the flow run, the heartbeat sender.

    `why_stopped()` tells a task interrupted by FlowRunStopped how to end: a (state, message)
    pair for its task run (the runner knows whether the run was cancelled or handed back).
    `on_superseded()` is called when a report is refused because another attempt has the run;
    the report then raises FlowRunStopped, so the flow stops where it is.
    """

    def __init__(self, client, flow_run_id, heartbeats, *, result_max_bytes=DEFAULT_RESULT_MAX_BYTES,
                 why_stopped=None, on_superseded=None, secrets=()):
        self.client = client
        self.flow_run_id = flow_run_id
        self.heartbeats = heartbeats
        self.result_max_bytes = result_max_bytes
        self.why_stopped = why_stopped or (lambda: ("CRASHED", "The flow's process was stopped."))
        self.on_superseded = on_superseded or (lambda: None)
        # The run's secret values, in every form they could be sent in: redacted from messages; a
        # result holding one is not kept.
        self.secrets = redaction_list(secrets)
        self.calls = {}

    def next_dynamic_key(self, task_key):
        """Calls of one task in one flow run are told apart by their order: 0, 1, 2, …"""
        index = self.calls.get(task_key, 0)
        self.calls[task_key] = index + 1
        return str(index)

    def report(self, path, payload):
        if payload.get("message"):  # redacted whole, then cut to what the server takes
            payload = {**payload, "message": redact(payload["message"], self.secrets)[:MAX_MESSAGE_CHARS]}
        try:
            return self.client.post(path, payload, retry_for=STATE_REPORT_RETRY_SECONDS)
        except ApiError as exc:
            if exc.superseded:  # this attempt no longer has the run: nothing more of it may happen
                self.on_superseded()
                raise FlowRunStopped() from exc
            raise


def bind(context):
    """Make `context` the run the decorators report to (the runner calls this once)."""
    global _context
    _context = context


def current_task_run_id():
    """The id of the task run whose code is executing, or None."""
    return _current_task_run.get()


def get_run_logger(name="flow"):
    """A logger whose lines become the run's logs under the agent (plain logging otherwise)."""
    return logging.getLogger(f"agent.run.{name}")


def flow(fn=None, *, name=None):
    """Mark `fn` as a flow. Calling it runs it; the agent's runner reports its state around it."""
    if fn is None:
        return functools.partial(flow, name=name)

    @functools.wraps(fn)
    def run_flow(*args, **kwargs):
        return fn(*args, **kwargs)

    run_flow.flow_name = name or fn.__name__
    return run_flow


def task(fn=None, *, name=None, retries=0, retry_delay_seconds=0):
    """Mark `fn` as a task; each call is a task run with up to `retries` further attempts."""
    if fn is None:
        return functools.partial(task, name=name, retries=retries, retry_delay_seconds=retry_delay_seconds)
    task_key = name or fn.__name__

    @functools.wraps(fn)
    def run_task(*args, **kwargs):
        if _context is None:
            return _run_plainly(fn, args, kwargs, retries, retry_delay_seconds)
        return _run_reported(_context, fn, task_key, args, kwargs, retries, retry_delay_seconds)

    run_task.task_key = task_key
    return run_task


def _run_plainly(fn, args, kwargs, retries, delay):
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if attempt == retries:
                raise
            time.sleep(delay)


def _run_reported(ctx, fn, task_key, args, kwargs, retries, delay):
    task_run = ctx.report(f"flow_runs/{ctx.flow_run_id}/task_runs", {
        "task_key": task_key, "dynamic_key": ctx.next_dynamic_key(task_key), "name": task_key,
        "max_retries": retries,
    })
    task_run_id = task_run["id"]
    state_path = f"task_runs/{task_run_id}/state"
    token = _current_task_run.set(task_run_id)
    try:
        if task_run["state"] == "COMPLETED" and task_run.get("result") is not None:
            log.info("Task %s completed in an earlier attempt; its result stands.", task_key)
            return task_run["result"]["value"]
        for attempt in range(retries + 1):
            ctx.report(state_path, {"state": "RUNNING", "message": f"Attempt {attempt + 1} of {retries + 1}."})
            ctx.heartbeats.track("task_runs", task_run_id)
            try:
                result = fn(*args, **kwargs)
            except FlowRunStopped:
                ctx.heartbeats.untrack("task_runs", task_run_id)
                state, message = ctx.why_stopped()
                ctx.report(state_path, {"state": state, "message": message})
                raise
            except Exception as exc:
                ctx.heartbeats.untrack("task_runs", task_run_id)
                if attempt < retries:
                    ctx.report(state_path, {"state": "SCHEDULED", "message": storable(
                        f"Attempt {attempt + 1} failed ({type(exc).__name__}: {exc}); retrying in {delay} s.")})
                    time.sleep(delay)
                    continue
                ctx.report(state_path, {"state": "FAILED", "message": storable(f"{type(exc).__name__}: {exc}")})
                raise
            ctx.heartbeats.untrack("task_runs", task_run_id)
            _report_completed(ctx, state_path, task_key, result)
            return result
    finally:
        _current_task_run.reset(token)


def _report_completed(ctx, state_path, task_key, result):
    """COMPLETED, with the result when the server can keep it exactly (else a line in the run's logs)."""
    try:
        encoded = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        exact = json.loads(encoded) == result  # a tuple comes back a list, {1: 2} as {"1": 2}: not the same
    except (TypeError, ValueError, RecursionError):
        exact = False
    if not exact:
        log.info("Task %s returned a %s, which JSON cannot hold as it is: its result is not kept, and a later "
                 "attempt of this flow run would run the task again.", task_key, type(result).__name__)
        ctx.report(state_path, {"state": "COMPLETED"})
        return
    if any(secret in encoded for secret in ctx.secrets):
        log.info("Task %s returned one of the run's secrets: its result is not kept, and a later attempt of this "
                 "flow run would run the task again.", task_key)
        ctx.report(state_path, {"state": "COMPLETED"})
        return
    size = len(encoded.encode())
    if size > ctx.result_max_bytes:
        log.info("Task %s returned %d bytes of JSON, more than the %d the server keeps "
                 "(ORCHESTRATOR_TASK_RESULT_MAX_BYTES): its result is not kept, and a later attempt of this flow run "
                 "would run the task again.", task_key, size, ctx.result_max_bytes)
        ctx.report(state_path, {"state": "COMPLETED"})
        return
    try:
        ctx.report(state_path, {"state": "COMPLETED", "result": result})
    except ApiError as exc:
        if exc.status not in (400, 413):
            raise
        # The body was refused (e.g. a smaller limit on the server's request size): the state matters more.
        log.info("The server refused task %s's result (%s); it is not kept.", task_key, exc)
        ctx.report(state_path, {"state": "COMPLETED"})
