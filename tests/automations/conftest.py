"""Automation tests: a workspace without its defaults (tests add the automations they need), events
built in memory with an injected clock, a way to see what fired; and for the actions, automations
and firings of a workspace and a real HTTP receiver on 127.0.0.1 that checks webhook signatures
the way a user's server would."""

import itertools
import json
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection

from automations.deliveries import verify_signature
from automations.models import Automation, Firing
from events.models import Event

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=dt_timezone.utc)
_names = itertools.count(1)


@pytest.fixture(autouse=True)
def private_destinations_allowed(settings):
    """The test receivers listen on 127.0.0.1, which deliveries refuse by default
    (test_deliveries.py's SSRF test turns this off again)."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERIES_ALLOW_PRIVATE_ADDRESSES": True}


@pytest.fixture
def bare_ws(ws):
    """`ws` without the default automations, so a test sees only its own."""
    Automation.objects.filter(workspace=ws).delete()
    return ws


def at(seconds):
    return T0 + timedelta(seconds=seconds)


def event(ws, name, seconds=0, kind="flow-run", id="r1", related=(), resource_name=None):
    """An event of `ws` that occurred `seconds` after T0 (not saved: on_events gets instances)."""
    resource = {"kind": kind, "id": str(id)}
    if resource_name:
        resource["name"] = resource_name
    return Event(id=uuid.uuid4(), workspace_id=getattr(ws, "pk", ws), occurred=at(seconds), received=at(seconds),
                 name=name, resource=resource, related=list(related), payload={})


def automation(ws, trigger, actions=(), enabled=True, name=None):
    return Automation.objects.create(workspace=ws, name=name or f"automation {next(_names)}", trigger=trigger,
                                     actions=list(actions), enabled=enabled)


def reactive(names, threshold=1, within=0, for_each=None, **match):
    return {"type": "event", "posture": "reactive", "match": {"name": list(names), **match},
            "threshold": threshold, "within": within, "for_each": for_each}


def proactive(after, expect, within, for_each="resource", **match):
    return {"type": "event", "posture": "proactive", "after": list(after), "expect": list(expect),
            "match": match, "within": within, "for_each": for_each}


def firings(auto):
    return list(Firing.objects.filter(automation=auto).order_by("fired", "pk"))


NOW = datetime(2026, 11, 29, 9, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def now():
    return NOW


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (row locks, SKIP LOCKED); CI runs it there")


@pytest.fixture
def make_automation(ws):
    def make(actions, workspace=None, name=None, **kw):
        return Automation.objects.create(workspace=workspace or ws, name=name or f"auto-{uuid.uuid4().hex[:8]}",
                                         trigger={"match": "flow-run.state.crashed"}, actions=actions, **kw)

    return make


@pytest.fixture
def make_firing(now):
    def make(automation, resource=None, reason="3 runs crashed within 10 minutes"):
        return Firing.objects.create(automation=automation, workspace=automation.workspace, fired=now,
                                     reason=reason, resource=resource or {})

    return make


def action_event(ws, name, resource, related=(), payload=None, occurred=NOW):
    """An Event as the persister hands it to consumers (not saved: the actions only read it)."""
    return Event(id=uuid.uuid4(), workspace_id=ws.pk, occurred=occurred, received=occurred, name=name,
                 resource=resource, related=list(related), payload=payload or {})


class Receiver:
    """A small HTTP server on 127.0.0.1 in a thread. Paths: /ok (200), /fail (500), /slow (answers
    after `slow_seconds`), /redirect (302 to /ok). Every request is recorded with its headers, its
    body, and whether its signature verifies with `secret`."""

    def __init__(self, secret="", slow_seconds=2.0):
        self.secret, self.slow_seconds = secret, slow_seconds
        self.requests = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                header = self.headers.get("X-Orchestrator-Signature")
                with receiver.lock:
                    receiver.requests.append({
                        "path": self.path, "headers": dict(self.headers), "body": body,
                        "verified": bool(receiver.secret) and verify_signature(receiver.secret, header, body)})
                if self.path.startswith("/slow"):
                    time.sleep(receiver.slow_seconds)
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "/ok")
                    self.end_headers()
                    return
                code = 500 if self.path.startswith("/fail") else 200
                answer = b"upstream broke" if code == 500 else b"thanks"
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the client gave up waiting (the slow path)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def received(self, path=None):
        with self.lock:
            return [r for r in self.requests if path is None or r["path"] == path]

    def json_bodies(self, path):
        return [json.loads(r["body"]) for r in self.received(path)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver(secret="whsec-test-value")
    yield server
    server.close()


@pytest.fixture
def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/hook"


@pytest.fixture
def quick_timeouts(settings):
    """Deliveries give up on a destination after half a second (the defaults are 3 s / 5 s)."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERIES_CONNECT_TIMEOUT_SECONDS": 0.5,
                             "DELIVERIES_READ_TIMEOUT_SECONDS": 0.5}
    return settings
