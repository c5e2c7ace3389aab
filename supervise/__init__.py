"""`python -m supervise`: run a Procfile's processes, restart one that dies, stop all on Ctrl-C."""

from .supervisor import Backoff, Supervisor, describe_exit, shell_argv

__all__ = ["Backoff", "Supervisor", "describe_exit", "shell_argv"]
