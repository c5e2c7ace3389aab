"""The hybrid agent and the flow SDK. Pure Python + HTTP: nothing here imports Django.

    from agent import flow, task

`python -m agent start --api URL --key KEY --queue NAME` polls the server and runs claimed flows
in subprocesses; the decorators report task runs when run under the agent, and do nothing
special when the same code runs plainly.
"""

from .sdk import flow, get_run_logger, task

__all__ = ["flow", "get_run_logger", "task"]
