"""Request bodies are bounded before anything reads them (orchestrator/bodies.py), under both servers.

Found from the outside: under uvicorn (what `make run` serves) a chunked body that never ended was
spooled to an unnamed temporary file by Django's ASGI handler, 1.7 GB in 15 s, and nothing answered;
under gunicorn the same body was read as empty and answered with a 400 about missing fields.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import RequestFactory

from orchestrator.bodies import BoundedBodies, BoundedBodiesMiddleware
from tests.agent.conftest import REPO, free_port, wait_for

LIMIT = 4096


@pytest.fixture
def small_limit(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT


def call_asgi(app, path, headers, messages):
    """Run `app` on one request; returns (what it sent, how many messages it received)."""
    sent, queue = [], list(messages)
    received = 0

    async def receive():
        nonlocal received
        received += 1
        if queue:
            return queue.pop(0)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}  # a body that never ends

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    # In a thread of its own: the browser tests (sometimes, by worker and order) leave an event loop
    # running in this one, where asyncio.run and async_to_sync both refuse.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    return sent, received


class ReadsTheBody:
    """A stand-in for Django's handler: reads the whole body, then answers 200."""

    def __init__(self):
        self.called = False

    async def __call__(self, scope, receive, send):
        self.called = True
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def status_and_body(sent):
    return sent[0]["status"], sent[1]["body"]


def test_asgi_a_body_declared_too_large_is_a_413_unread(small_limit):
    app = ReadsTheBody()
    sent, received = call_asgi(BoundedBodies(app), "/api/accounts/a/workspaces/w/flow_runs/",
                               [(b"content-length", str(10 ** 10).encode())], [])
    status, body = status_and_body(sent)
    assert status == 413 and received == 0 and not app.called
    error = json.loads(body)["error"]
    assert error["code"] == "payload_too_large" and f"{LIMIT} bytes" in error["message"]


def test_asgi_a_chunked_body_is_a_411_unread_and_plain_text_outside_the_api(small_limit):
    app = ReadsTheBody()
    sent, received = call_asgi(BoundedBodies(app), "/dashboard/schedules/new/", [(b"transfer-encoding", b"chunked")], [])
    status, body = status_and_body(sent)
    assert status == 411 and received == 0 and not app.called
    assert b"Content-Length" in body and not body.startswith(b"{")


def test_asgi_an_incoming_webhook_is_bounded_by_its_own_limit_in_its_own_form(small_limit, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "WEBHOOK_MAX_BODY_BYTES": 1000}
    app = ReadsTheBody()
    sent, received = call_asgi(BoundedBodies(app), "/hooks/abc", [(b"content-length", b"1001")], [])
    status, body = status_and_body(sent)
    assert status == 413 and received == 0 and not app.called
    assert "ORCHESTRATOR_WEBHOOK_MAX_BODY_BYTES" in json.loads(body)["detail"]
    sent, _ = call_asgi(BoundedBodies(ReadsTheBody()), "/hooks/abc", [(b"transfer-encoding", b"chunked")], [])
    assert status_and_body(sent)[0] == 411 and "Content-Length" in json.loads(status_and_body(sent)[1])["detail"]


def test_asgi_a_body_growing_past_the_limit_stops_being_read(small_limit):
    # A length within the limit, then more than it says (a server that frames loosely): cut at the limit.
    sent, received = call_asgi(BoundedBodies(ReadsTheBody()), "/api/x", [(b"content-length", b"100")], [])
    assert status_and_body(sent)[0] == 413
    assert received <= LIMIT // 1024 + 1


def test_asgi_a_body_within_the_limit_reaches_the_application(small_limit):
    app = ReadsTheBody()
    sent, _ = call_asgi(BoundedBodies(app), "/api/x", [(b"content-length", b"3")],
                        [{"type": "http.request", "body": b"abc", "more_body": False}])
    assert app.called and status_and_body(sent) == (200, b"ok")


@pytest.mark.parametrize("path, json_form", [("/api/accounts/a/workspaces/w/flow_runs/", True), ("/admin/", False)])
def test_wsgi_a_chunked_body_is_a_411_not_a_400_about_missing_fields(small_limit, path, json_form):
    request = RequestFactory().post(path, data=b"{}", content_type="application/json",
                                    HTTP_TRANSFER_ENCODING="chunked")
    del request.META["CONTENT_LENGTH"]  # gunicorn sets none for a chunked body
    answer = BoundedBodiesMiddleware(lambda r: pytest.fail("the view was reached"))(request)
    assert answer.status_code == 411
    if json_form:
        assert json.loads(answer.content)["error"]["code"] == "length_required"
    else:
        assert answer["Content-Type"].startswith("text/plain")


def test_wsgi_a_body_declared_too_large_is_a_413_and_one_within_passes(small_limit):
    middleware = BoundedBodiesMiddleware(lambda r: "reached")
    big = RequestFactory().post("/api/x", data=b"{}", content_type="application/json")
    big.META["CONTENT_LENGTH"] = str(LIMIT + 1)
    assert middleware(big).status_code == 413
    assert middleware(RequestFactory().post("/api/x", data=b"{}", content_type="application/json")) == "reached"


# --- from the outside: both servers, a socket that never stops sending ---------------------------

SERVERS = {
    "uvicorn": lambda port: [sys.executable, "-m", "uvicorn", "orchestrator.asgi:application", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"],
    "gunicorn": lambda port: [sys.executable, "-m", "gunicorn", "orchestrator.wsgi", "-k", "gthread", "-w", "1",
                              "--threads", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
}


@pytest.fixture(params=sorted(SERVERS))
def live_server_process(request, tmp_path):
    port = free_port()
    env = {**os.environ, "DEBUG": "true", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "REDIS_URL": "",
           "ORCHESTRATOR_API_MAX_BODY_BYTES": str(64 * 1024)}
    process = subprocess.Popen(SERVERS[request.param](port), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)

    def listening():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(listening, timeout=60, what=f"{request.param} to listen")
    yield port
    process.terminate()
    process.wait(timeout=20)


def _send_until_answered(port, head, chunk, seconds=10):
    """Send `head`, then `chunk` again and again until the server answers or closes; returns (first
    answer line, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head)
    sock.settimeout(0.01)
    sent, began = 0, time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            try:
                data = sock.recv(4096)
                return (data.split(b"\r\n", 1)[0].decode() if data else "closed"), sent
            except socket.timeout:
                pass
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except OSError:
                continue  # closed on us: the answer (if any) is read above
        return "no answer", sent
    finally:
        sock.close()


@pytest.mark.slow
def test_a_never_ending_chunked_body_is_answered_at_once_and_never_stored(live_server_process):
    head = (b"POST /api/accounts/demo/workspaces/demo/flow_runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    data = b"a" * 65536
    answer, sent = _send_until_answered(live_server_process, head, b"%x\r\n%s\r\n" % (len(data), data))
    assert answer.startswith("HTTP/1.1 411"), (answer, sent)
    assert sent < 64 * 1024 * 1024  # answered long before a disk could notice


@pytest.mark.slow
def test_a_ten_gigabyte_declared_body_is_a_413_before_it_is_sent(live_server_process):
    head = (b"POST /api/accounts/demo/workspaces/demo/flow_runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n")
    answer, sent = _send_until_answered(live_server_process, head, b"a" * 65536)
    assert answer.startswith("HTTP/1.1 413"), (answer, sent)
