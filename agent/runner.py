"""`python -m agent.runner`: runs one claimed flow run in this (child) process.

The agent passes everything in the environment (ORCHESTRATOR_FLOW_RUN_ID, _ENTRYPOINT,
_PARAMETERS as JSON, _API_URL, _API_KEY, _HEARTBEAT_MODE, _RUNNER_HEARTBEAT_SECONDS). Python
logging goes to stderr as one marked JSON line per record, which the agent turns into run logs
with their level and task run; anything else printed is logged as plain output. Exit code 0
means the flow returned, 1 that it raised.
"""

import importlib
import json
import logging
import os
import sys
import traceback

from . import sdk
from .client import ApiClient
from .heartbeats import start_heartbeats

# Prefix of the structured log lines on stderr; a record separator cannot appear in normal output.
LOG_MARKER = "\x1eorchestrator-log "


class MarkedLineHandler(logging.Handler):
    """Writes each record as LOG_MARKER + JSON, tagged with the task run it came from."""

    def emit(self, record):
        try:
            line = json.dumps({"level": record.levelno, "message": self.format(record),
                               "task_run_id": sdk.current_task_run_id()})
            sys.__stderr__.write(LOG_MARKER + line + "\n")
            sys.__stderr__.flush()
        except Exception:  # noqa: BLE001 - logging must never break the flow
            self.handleError(record)


def load_entrypoint(entrypoint):
    """Import `module:function` (dotted attributes allowed after the colon)."""
    module_name, _, attribute = entrypoint.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"Entrypoint {entrypoint!r} is not of the form module:function")
    target = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def main():
    env = os.environ
    handler = MarkedLineHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("urllib3").setLevel(logging.WARNING)

    base_url, key = env["ORCHESTRATOR_API_URL"], env["ORCHESTRATOR_API_KEY"]
    flow_run_id = env["ORCHESTRATOR_FLOW_RUN_ID"]
    client = ApiClient(base_url, key)
    interval = float(env.get("ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS") or 0)
    heartbeats = start_heartbeats(env.get("ORCHESTRATOR_HEARTBEAT_MODE", "thread"), client, interval,
                                  base_url=base_url, key=key)
    heartbeats.track("flow_runs", flow_run_id)
    sdk.bind(sdk.RunContext(client, flow_run_id, heartbeats))
    try:
        function = load_entrypoint(env["ORCHESTRATOR_ENTRYPOINT"])
        result = function(**json.loads(env.get("ORCHESTRATOR_PARAMETERS") or "{}"))
        logging.getLogger("agent.runner").info("Flow returned %r", result)
        return 0
    except BaseException:  # noqa: BLE001 - whatever the flow raised, the run failed
        traceback.print_exc()
        return 1
    finally:
        heartbeats.stop()


if __name__ == "__main__":
    sys.exit(main())
