"""PostgreSQL drops a connection (a restart, a failover, `pg_terminate_backend`): the request that
loses it answers 503 with Retry-After in the one error form, not a 500, and the next one works.

Through a live server on one keep-alive HTTP connection, so one server thread keeps one
persistent database connection (CONN_MAX_AGE) across requests, as a web process does, and
Django's request signals (close_old_connections, CONN_HEALTH_CHECKS) run as in production.
"""

import http.client
import json
from unittest import mock

import psycopg
import pytest
from django.db import OperationalError, connection

from runs.api import permissions
from runs.models import FlowRun, Role
from tests import factories
from tests.conftest import api_prefix


def kill_backend(pid):
    """pg_terminate_backend from a connection of its own, waiting until the backend is gone."""
    params = connection.settings_dict
    with psycopg.connect(dbname=params["NAME"], user=params["USER"], password=params["PASSWORD"] or None,
                         host=params["HOST"] or None, port=params["PORT"] or None, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def kill_this_threads_connection():
    """Called inside a request: kill the backend this server thread's Django connection talks to."""
    from django.db import connection as thread_connection

    kill_backend(thread_connection.connection.info.backend_pid)


class KeepAlive:
    """One HTTP/1.1 connection to the live server: every request lands on the same server thread."""

    def __init__(self, live_server, secret):
        host, port = live_server.url.removeprefix("http://").split(":")
        self.http = http.client.HTTPConnection(host, int(port), timeout=30)
        self.headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.http.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
        response = self.http.getresponse()
        return response.status, response.headers, response.read()


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("kills PostgreSQL backends")


@pytest.fixture
def client_of(live_server, postgres_only):
    # Persistent connections as in production (DATABASE_CONN_MAX_AGE); the browser tests' fixture
    # turns them off for the rest of the session.
    from django.db import connections

    before = connections.settings["default"]["CONN_MAX_AGE"]
    connections.settings["default"]["CONN_MAX_AGE"] = 60
    opened = []

    def make(ws, role=Role.OPERATOR):
        opened.append(KeepAlive(live_server, factories.api_key(ws, role=role)[1]))
        return opened[-1]

    yield make
    for keep_alive in opened:  # the server thread closes its database connection with the socket
        keep_alive.http.close()
    connections.settings["default"]["CONN_MAX_AGE"] = before


def assert_database_unavailable(status, headers, body):
    assert status == 503, body[:300]
    assert int(headers["Retry-After"]) > 0
    error = json.loads(body)["error"]
    assert error["code"] == "database_unavailable" and set(error) == {"code", "message", "fields"}, error


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_killed_between_requests_is_replaced_before_the_next_one(client_of):
    ws = factories.workspace()
    client = client_of(ws)
    status, _, _ = client.call("GET", f"{api_prefix(ws)}/flow_runs/")
    assert status == 200
    with connection.cursor() as cursor:  # every backend of the test database but the test's own
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        server_backends = [pid for (pid,) in cursor.fetchall()]
    assert server_backends, "the live server thread should hold a persistent connection"
    for pid in server_backends:
        kill_backend(pid)
    status, _, body = client.call("GET", f"{api_prefix(ws)}/flow_runs/")
    assert status == 200, body[:300]  # CONN_HEALTH_CHECKS found the dead connection and reconnected


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["read", "write"])
def test_a_connection_killed_mid_request_is_a_503_with_retry_after_then_the_next_request_works(client_of, method):
    ws = factories.workspace()
    flow = factories.flow(ws)
    client = client_of(ws)
    call = (("GET", f"{api_prefix(ws)}/flow_runs/", None) if method == "read"
            else ("POST", f"{api_prefix(ws)}/flow_runs/", {"flow": flow.name}))
    assert client.call(*call)[0] in (200, 201)
    original = permissions.role_in_workspace

    def role_then_lose_the_database(*args):
        from django.db import connection as thread_connection

        role = original(*args)  # authenticated, workspace resolved; the view's queries come next
        # The request has used its connection (a cached API key may have needed no query so far,
        # and a first query would find a dead connection by its health check and reconnect):
        # the connection is lost in the middle of the request's work.
        with thread_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        kill_this_threads_connection()
        return role

    with mock.patch.object(permissions, "role_in_workspace", role_then_lose_the_database):
        assert_database_unavailable(*client.call(*call))
    status, _, body = client.call(*call)
    assert status in (200, 201), body[:300]
    assert FlowRun.objects.filter(flow=flow).count() == (2 if method == "write" else 0)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_healthz_that_loses_the_database_midway_answers_503_naming_the_database(client_of, live_server):
    from services import towel

    client = client_of(factories.workspace())
    original = towel.health_report

    def report_after_losing_the_database(now):
        kill_this_threads_connection()
        return original(now)

    with mock.patch.object(towel, "health_report", report_after_losing_the_database):
        status, headers, body = client.call("GET", "/healthz")
    assert status == 503, body[:300]
    assert json.loads(body)["database"]["ok"] is False
    status, _, body = client.call("GET", "/healthz")
    assert status in (200, 503) and json.loads(body)["database"]["ok"] is True, body[:300]


@pytest.mark.django_db
def test_a_page_outside_the_api_that_loses_the_database_is_a_503_not_a_500(client, settings):
    """Any database: the middleware's answer for views that are not the API's (here the dashboard)."""
    user = factories.user()
    client.force_login(user)
    with mock.patch("runs.dashboard.views.queries.heartbeat_runs", side_effect=OperationalError("server closed the connection")):
        response = client.get("/dashboard/")
    assert response.status_code == 503 and int(response["Retry-After"]) > 0
    assert b"database is unreachable" in response.content


@pytest.mark.django_db
def test_an_api_view_that_loses_the_database_is_a_json_503_on_any_database(api, ws, key_for):
    api.as_key(key_for(Role.VIEWER))
    with mock.patch.object(permissions, "role_in_workspace", side_effect=OperationalError("database is locked")):
        response = api.get(f"{api_prefix(ws)}/flow_runs/")
    assert_database_unavailable(response.status_code, response, response.content)


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_healthy_connection_is_checked_without_a_round_trip(postgres_only, monkeypatch):
    """orchestrator/db/postgresql: nothing to read on the socket, so no `SELECT 1` before the request's first query."""
    from django.db import connections

    wrapper = connections["default"]
    checks = []
    monkeypatch.setattr(type(wrapper), "is_usable", lambda self: checks.append(self) or True)
    wrapper.ensure_connection()
    monkeypatch.setattr(wrapper, "health_check_enabled", True)
    monkeypatch.setattr(wrapper, "health_check_done", False)
    wrapper.close_if_health_check_failed()
    assert checks == [] and wrapper.health_check_done


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_connection_whose_backend_ended_is_closed_by_the_check(postgres_only):
    from django.db import connections

    other = connections.create_connection("default")
    try:
        other.ensure_connection()
        kill_backend(other.connection.info.backend_pid)
        other.health_check_enabled, other.health_check_done = True, False
        other.close_if_health_check_failed()
        assert other.connection is None  # closed: the next query connects afresh
        other.ensure_connection()
        with other.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        other.close()
