"""`python -m agent start --api URL (--key KEY | --key-file PATH) --queue NAME [...]`.

Every flag has an environment variable; flags win. `--api` is the workspace's API prefix, e.g.
http://127.0.0.1:8000/api/accounts/demo/workspaces/demo.
"""

import argparse
import logging
import math
import os
import signal
import socket
import sys

from .client import ApiClient
from .heartbeats import MODES
from .worker import Agent

VERSION = "0.1.0"
DAY = 86400


def _env(name, default):
    return os.environ.get(name) or default


def _bounded(kind, low, high, env, *, off=None):
    """An argparse type: a `kind` (int or float) from `low` to `high` (or `off`, e.g. 0 for "none").

    A flag's default comes from its environment variable as a string, and argparse parses it with
    this too, so a bad variable is refused at start, naming it, rather than making a busy loop (a
    0-second poll) or an agent whose every claim or report the server refuses (a limit or interval
    over the server's bounds).
    """

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is not None and (value == off or (math.isfinite(value) and low <= value <= high)):
            return value
        allowed = f"{low:g} to {high:g}" + (f", or {off:g}" if off is not None else "")
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'} from "
                                         f"{allowed} (flag or env {env})")

    return parse


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m agent", description="The Orchestrator hybrid agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="poll the server and run claimed flows")
    start.add_argument("--api", default=_env("ORCHESTRATOR_API_URL", None),
                       help="workspace API prefix (env ORCHESTRATOR_API_URL)")
    keys = start.add_mutually_exclusive_group()
    keys.add_argument("--key", default=None, help="API key with the agent role (env ORCHESTRATOR_API_KEY)")
    keys.add_argument("--key-file", default=_env("ORCHESTRATOR_API_KEY_FILE", None),
                      help="file holding the API key (env ORCHESTRATOR_API_KEY_FILE)")
    start.add_argument("--queue", action="append", dest="queues",
                       help="work queue to poll; repeat for more (env ORCHESTRATOR_AGENT_QUEUES, comma-separated)")
    start.add_argument("--name", default=_env("ORCHESTRATOR_AGENT_NAME", socket.gethostname()),
                       help="agent name, unique in the workspace (default: host name)")
    # Intervals: at least 0.1 s (no busy loop), at most a day (the server's bound on declared ones).
    start.add_argument("--query-seconds", default=_env("ORCHESTRATOR_AGENT_QUERY_SECONDS", "10"),
                       type=_bounded(float, 0.1, DAY, "ORCHESTRATOR_AGENT_QUERY_SECONDS"))
    start.add_argument("--heartbeat-seconds", default=_env("ORCHESTRATOR_AGENT_HEARTBEAT_SECONDS", "30"),
                       type=_bounded(float, 0.1, DAY, "ORCHESTRATOR_AGENT_HEARTBEAT_SECONDS"))
    start.add_argument("--runner-heartbeat-seconds", default=_env("ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS", "30"),
                       type=_bounded(float, 0.1, DAY, "ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS", off=0),
                       help="flow and task run heartbeats; 0 turns them off")
    start.add_argument("--heartbeat-mode", choices=MODES, default=_env("ORCHESTRATOR_HEARTBEAT_MODE", "thread"))
    start.add_argument("--limit", default=_env("ORCHESTRATOR_AGENT_LIMIT", "8"),
                       type=_bounded(int, 1, 10_000, "ORCHESTRATOR_AGENT_LIMIT"), help="most flow runs at once")
    start.add_argument("--grace-seconds", default=_env("ORCHESTRATOR_AGENT_GRACE_SECONDS", "30"),
                       type=_bounded(float, 0, DAY, "ORCHESTRATOR_AGENT_GRACE_SECONDS"),
                       help="on SIGTERM, how long running flows may take to finish")
    start.add_argument("--cancel-grace-seconds", default=_env("ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS", "30"),
                       type=_bounded(float, 0, DAY, "ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS"),
                       help="a stopped flow gets this long to end after SIGTERM (then its runner kills it)")
    start.add_argument("--runner-stop-window-seconds", default=_env("ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS", "10"),
                       type=_bounded(float, 0, DAY, "ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS"),
                       help="after the grace, a stopping runner's time to kill, report and ship its last logs")
    start.add_argument("--webserver-host", default=_env("ORCHESTRATOR_AGENT_WEBSERVER_HOST", "127.0.0.1"))
    start.add_argument("--webserver-port", default=_env("ORCHESTRATOR_AGENT_WEBSERVER_PORT", "8080"),
                       type=_bounded(int, 0, 65535, "ORCHESTRATOR_AGENT_WEBSERVER_PORT", off=-1),
                       help="healthcheck port; 0 picks a free one, -1 turns the server off")
    return parser


# Set by the agent on itself when it re-executes to drop its key from its environment and command
# line: the read end of a pipe holding the key.
KEY_FD_VARIABLE = "ORCHESTRATOR_AGENT_KEY_FD"


def _without_key_flag(argv):
    """`argv` without `--key KEY` / `--key=KEY`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--key":
            skip = True
        elif not arg.startswith("--key="):
            kept.append(arg)
    return kept


def hide_key_and_reexec(key, argv):
    """Run this agent again (same process id) with its key in a pipe instead of its environment or
    command line. /proc/<pid>/environ and /proc/<pid>/cmdline keep what a process started with, and
    the flows it runs (same user) could read them there; after this they hold no key."""
    read_end, write_end = os.pipe()
    os.write(write_end, key.encode())
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {name: value for name, value in os.environ.items() if name != "ORCHESTRATOR_API_KEY"}
    env[KEY_FD_VARIABLE] = str(read_end)
    os.execve(sys.executable, [sys.executable, "-m", "agent", *_without_key_flag(argv)], env)


def _key_from_pipe():
    fd = os.environ.pop(KEY_FD_VARIABLE, None)
    if fd is None:
        return None
    try:
        with os.fdopen(int(fd), "rb") as pipe:
            return pipe.read().decode().strip() or None
    except (OSError, ValueError):
        return None


def main(argv=None, *, hide_key=False):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not args.api:
        sys.exit("Give the workspace API prefix with --api or ORCHESTRATOR_API_URL.")
    piped = _key_from_pipe()
    key = piped or args.key or os.environ.get("ORCHESTRATOR_API_KEY")
    if key and not piped and not args.key_file and hide_key:
        hide_key_and_reexec(key, argv)  # does not return
    if args.key_file and not piped:
        try:
            with open(args.key_file) as handle:
                key = handle.read().strip()
        except OSError as exc:
            sys.exit(f"Cannot read the API key file: {exc}")
    if not key:
        sys.exit("Give an API key with --key, --key-file or ORCHESTRATOR_API_KEY.")
    queues = args.queues or [q.strip() for q in _env("ORCHESTRATOR_AGENT_QUEUES", "default").split(",") if q.strip()]
    agent = Agent(
        ApiClient(args.api, key), api_url=args.api, key=key, name=args.name, queues=queues,
        query_seconds=args.query_seconds, heartbeat_seconds=args.heartbeat_seconds,
        runner_heartbeat_seconds=args.runner_heartbeat_seconds, heartbeat_mode=args.heartbeat_mode,
        limit=args.limit, grace_seconds=args.grace_seconds, cancel_grace_seconds=args.cancel_grace_seconds,
        runner_stop_window_seconds=args.runner_stop_window_seconds,
        webserver_host=args.webserver_host,
        webserver_port=None if args.webserver_port < 0 else args.webserver_port, version=VERSION,
    )
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main(hide_key=True))
