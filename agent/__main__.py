"""`python -m agent start --api URL (--key KEY | --key-file PATH) --queue NAME [...]`.

Every flag has an environment variable; flags win. `--api` is the workspace's API prefix, e.g.
http://127.0.0.1:8000/api/accounts/demo/workspaces/demo.
"""

import argparse
import logging
import os
import signal
import socket
import sys

from .client import ApiClient
from .heartbeats import MODES
from .worker import Agent

VERSION = "0.1.0"


def _env(name, default):
    return os.environ.get(name) or default


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
    start.add_argument("--query-seconds", type=float, default=float(_env("ORCHESTRATOR_AGENT_QUERY_SECONDS", 10)))
    start.add_argument("--heartbeat-seconds", type=float,
                       default=float(_env("ORCHESTRATOR_AGENT_HEARTBEAT_SECONDS", 30)))
    start.add_argument("--runner-heartbeat-seconds", type=float,
                       default=float(_env("ORCHESTRATOR_RUNNER_HEARTBEAT_SECONDS", 30)),
                       help="flow and task run heartbeats; 0 turns them off")
    start.add_argument("--heartbeat-mode", choices=MODES, default=_env("ORCHESTRATOR_HEARTBEAT_MODE", "thread"))
    start.add_argument("--limit", type=int, default=int(_env("ORCHESTRATOR_AGENT_LIMIT", 8)),
                       help="most flow runs at once")
    start.add_argument("--grace-seconds", type=float, default=float(_env("ORCHESTRATOR_AGENT_GRACE_SECONDS", 30)),
                       help="on SIGTERM, how long running flows may take to finish")
    start.add_argument("--cancel-grace-seconds", type=float,
                       default=float(_env("ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS", 30)),
                       help="a cancelled run's process gets SIGTERM, then SIGKILL after this long")
    start.add_argument("--webserver-host", default=_env("ORCHESTRATOR_AGENT_WEBSERVER_HOST", "127.0.0.1"))
    start.add_argument("--webserver-port", type=int, default=int(_env("ORCHESTRATOR_AGENT_WEBSERVER_PORT", 8080)),
                       help="healthcheck port; 0 picks a free one, -1 turns the server off")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not args.api:
        sys.exit("Give the workspace API prefix with --api or ORCHESTRATOR_API_URL.")
    key = args.key or os.environ.get("ORCHESTRATOR_API_KEY")
    if args.key_file:
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
        webserver_host=args.webserver_host,
        webserver_port=None if args.webserver_port < 0 else args.webserver_port, version=VERSION,
    )
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
