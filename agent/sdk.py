"""`@flow` and `@task`: report task runs when running under the agent, run plainly otherwise.

Under the agent, `agent.runner` binds a RunContext before calling the flow. Each task call
creates (or finds) its task run, moves it to RUNNING, keeps it in the heartbeats, and ends it
COMPLETED or FAILED; with `retries=` a failed attempt goes back to SCHEDULED and runs again after
`retry_delay_seconds`. Tasks run when called, so a task that takes another's result waits for it.
"""

import contextvars
import functools
import logging
import time

_context = None
_current_task_run = contextvars.ContextVar("current_task_run", default=None)

# A state report waits this long for a server that is away before the task gives up.
STATE_REPORT_RETRY_SECONDS = 600


class RunContext:
    """What the SDK needs to report: the client, the flow run, the heartbeat sender."""

    def __init__(self, client, flow_run_id, heartbeats):
        self.client = client
        self.flow_run_id = flow_run_id
        self.heartbeats = heartbeats
        self.calls = {}

    def next_dynamic_key(self, task_key):
        """Calls of one task in one flow run are told apart by their order: 0, 1, 2, …"""
        index = self.calls.get(task_key, 0)
        self.calls[task_key] = index + 1
        return str(index)

    def report(self, path, payload):
        return self.client.post(path, payload, retry_for=STATE_REPORT_RETRY_SECONDS)


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
        for attempt in range(retries + 1):
            ctx.report(state_path, {"state": "RUNNING", "message": f"Attempt {attempt + 1} of {retries + 1}."})
            ctx.heartbeats.track("task_runs", task_run_id)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                ctx.heartbeats.untrack("task_runs", task_run_id)
                if attempt < retries:
                    ctx.report(state_path, {"state": "SCHEDULED", "message": (
                        f"Attempt {attempt + 1} failed ({type(exc).__name__}: {exc}); retrying in {delay} s.")})
                    time.sleep(delay)
                    continue
                ctx.report(state_path, {"state": "FAILED", "message": f"{type(exc).__name__}: {exc}"[:10000]})
                raise
            ctx.heartbeats.untrack("task_runs", task_run_id)
            ctx.report(state_path, {"state": "COMPLETED"})
            return result
    finally:
        _current_task_run.reset(token)
