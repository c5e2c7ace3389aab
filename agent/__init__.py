"""The hybrid agent and the flow SDK. Pure Python + HTTP: nothing here imports Django.

    from agent import flow, task

`python -m agent start --api URL --key KEY --queue NAME` polls the server and runs claimed flows
in subprocesses; the decorators report task runs when run under the agent, and do nothing
special when the same code runs plainly.
"""

__all__ = ["flow", "get_run_logger", "task"]


def __getattr__(name):
    # The SDK (and `requests` with it, ~18 MiB) loads on first use: the server imports agent.logs
    # for redaction and never needs an HTTP client to do so.
    if name in __all__:
        from . import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
