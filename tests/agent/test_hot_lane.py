"""The hot lane (runs/api/hot_lane.py): a flow run's heartbeat that is in order is answered before
URL resolution and DRF (the middleware, under ASGI and in the test client) or before Django's
handler (the WSGI application, under gunicorn), with exactly the answer the API's view gives;
anything else falls through to the view, which answers it as it always did."""

import json
import time
import uuid

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import OperationalError, connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs.api import agents, hot_lane
from runs.beats_behind import beats_behind
from runs.models import FlowRun, State
from runs.run_tokens import token_for
from tests.agent.test_api import due_run
from tests.conftest import api_prefix

HEADERS_OF_NOTE = ("Content-Type", "Content-Length", "Allow", "Vary", "X-Frame-Options", "X-Content-Type-Options",
                   "Referrer-Policy", "Cross-Origin-Opener-Policy", "Set-Cookie")


@pytest.fixture
def views(monkeypatch):
    """The calls the API's heartbeat view got (the lane's fall-throughs)."""
    calls = []
    original = agents.FlowRunHeartbeatView.post

    def post(self, request, run_id, **kwargs):
        calls.append(run_id)
        return original(self, request, run_id, **kwargs)

    monkeypatch.setattr(agents.FlowRunHeartbeatView, "post", post)
    return calls


def beat(client, prefix, run_id, token, query=""):
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.post(f"{prefix}/agent/flow_runs/{run_id}/heartbeat{query}")


def answer_of(response):
    return response.status_code, response.content, {name: response.headers.get(name) for name in HEADERS_OF_NOTE}


def current_token(run):
    run = FlowRun.objects.get(pk=run.pk)
    return token_for(run.pk, run.workspace_id, run.token_generation)


def test_a_beat_in_order_is_answered_by_the_lane_as_the_view_answers_it(reporter, ws, prefix, views, monkeypatch):
    run = due_run(ws, state=State.RUNNING)
    by_lane = beat(reporter.client, prefix, run.pk, current_token(run))
    assert views == []
    assert (by_lane.status_code, by_lane.json()) == (200, {"state": "RUNNING"})
    before = FlowRun.objects.get(pk=run.pk).last_heartbeat
    monkeypatch.setattr(hot_lane, "flow_run_heartbeat", lambda *request: None)  # the lane closed
    by_view = beat(reporter.client, prefix, run.pk, current_token(run))
    assert views == [run.pk]
    assert answer_of(by_lane) == answer_of(by_view)
    assert FlowRun.objects.get(pk=run.pk).last_heartbeat > before


def test_the_lane_tells_a_cancelling_run_to_stop(reporter, ws, prefix, views):
    run = due_run(ws, state=State.CANCELLING)
    assert beat(reporter.client, prefix, run.pk, current_token(run)).json() == {"state": "CANCELLING"}
    assert views == []


def test_the_lane_s_beat_emits_its_event(reporter, ws, prefix, views, flush_events):
    run = due_run(ws, state=State.RUNNING)
    assert beat(reporter.client, prefix, run.pk, current_token(run)).status_code == 200
    beats = [e for e in flush_events() if e.name == "flow-run.heartbeat"]
    assert [(e.resource["id"], e.payload) for e in beats] == [(str(run.pk), {"state": "RUNNING"})]
    assert views == []


def _cases(ws, other_ws):
    """(name, run id, token, prefix, query) of beats that are not in order."""
    running = due_run(ws, state=State.RUNNING)
    other = due_run(ws, state=State.RUNNING)
    superseded = due_run(ws, state=State.RUNNING)
    stale = current_token(superseded)
    FlowRun.objects.filter(pk=superseded.pk).update(token_generation=superseded.token_generation + 1)
    gone = uuid.uuid4()
    prefix = api_prefix(ws)
    return [
        ("another run's token", running.pk, current_token(other), prefix, ""),
        ("an earlier attempt's token", superseded.pk, stale, prefix, ""),
        ("a run that does not exist", gone, token_for(gone, ws.pk, 0), prefix, ""),
        ("another workspace's names", running.pk, current_token(running), api_prefix(other_ws), ""),
        ("a token not made here", running.pk, current_token(running)[:-4] + "AAAA", prefix, ""),
        ("a malformed token", running.pk, "orr_nonsense", prefix, ""),
        ("an API key's place", running.pk, "not-a-run-token", prefix, ""),
        ("a query string", running.pk, current_token(running), prefix, "?x=1"),
    ]


def test_every_beat_not_in_order_falls_through_to_the_view(reporter, ws, other_ws, monkeypatch):
    cases = _cases(ws, other_ws)
    lane_answers, original = [], hot_lane.flow_run_heartbeat

    def lane(*request):
        lane_answers.append(original(*request))
        return lane_answers[-1]

    monkeypatch.setattr(hot_lane, "flow_run_heartbeat", lane)
    by_lane = []
    for name, run_id, token, prefix, query in cases:
        lane_answers.clear()
        by_lane.append(answer_of(beat(reporter.client, prefix, run_id, token, query)))
        assert lane_answers == [None], name
    monkeypatch.setattr(hot_lane, "flow_run_heartbeat", lambda *request: None)
    for (name, run_id, token, prefix, query), lane_answer in zip(cases, by_lane):
        assert answer_of(beat(reporter.client, prefix, run_id, token, query)) == lane_answer, name
    statuses = {name: answer[0] for (name, *_), answer in zip(cases, by_lane)}
    assert statuses == {"another run's token": 403, "an earlier attempt's token": 409,
                        "a run that does not exist": 404, "another workspace's names": 404,
                        "a token not made here": 401, "a malformed token": 401, "an API key's place": 401,
                        "a query string": 200}


def test_a_database_error_in_the_lane_is_the_view_s_to_answer(reporter, ws, prefix, views, monkeypatch):
    run = due_run(ws, state=State.RUNNING)

    def lost(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(agents.hot_sql, "beat_flow_run", lost)
    answer = beat(reporter.client, prefix, run.pk, current_token(run))
    assert views == [run.pk]
    assert answer.status_code == 503  # as the view answers a lost database, not a 500


@pytest.mark.skipif(connection.vendor != "postgresql", reason="one round trip: PostgreSQL's")
def test_a_beat_in_the_lane_is_one_query_once_its_workspace_is_known(reporter, ws, prefix):
    run = due_run(ws, state=State.RUNNING)
    token = current_token(run)
    beat(reporter.client, prefix, run.pk, token)
    with CaptureQueriesContext(connection) as captured:
        assert beat(reporter.client, prefix, run.pk, token).status_code == 200
    assert [q["sql"].split()[0] for q in captured.captured_queries] == ["UPDATE"]


def test_the_middleware_lane_leaves_a_host_not_allowed_to_the_common_middleware(reporter, ws, prefix, views):
    run = due_run(ws, state=State.RUNNING)
    before = FlowRun.objects.get(pk=run.pk).last_heartbeat
    reporter.client.credentials(HTTP_AUTHORIZATION=f"Bearer {current_token(run)}")
    answer = reporter.client.post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat", HTTP_HOST="evil.example")
    assert answer.status_code == 400
    assert FlowRun.objects.get(pk=run.pk).last_heartbeat == before


# --- The WSGI application (orchestrator/wsgi.py), called as gunicorn calls it. Its lane checks the
# database connection as Django's request signals do, which would end a test's own transaction: these
# tests run without one.

def wsgi_answer(app, path, token, body=b"", **environ):
    """(status, headers sorted, body) of `app`'s answer to a POST of `body` to `path` with `token`."""
    request = RequestFactory().generic("POST", path, body, content_type="application/json",
                                       HTTP_AUTHORIZATION=f"Bearer {token}", **environ)
    started = {}

    def start_response(status, headers, exc_info=None):
        started.update(status=status, headers=sorted(headers))

    result = app(request.environ, start_response)
    try:
        content = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return started["status"], started["headers"], content


def django_application():
    """Django's WSGI handler, as orchestrator/wsgi.py makes it, with the settings as they are now (a
    handler reads its middleware's settings once)."""
    return WSGIHandler()


@pytest.fixture
def wsgi_lane(monkeypatch):
    """wsgi_lane() -> the WSGI application as orchestrator/wsgi.py makes it, with the settings as
    they are now; wsgi_lane.answers: the answers its lane gave (None: fell through to Django)."""
    answers, original = [], hot_lane.HotLaneApplication.heartbeat

    def heartbeat(self, environ):
        answers.append(original(self, environ))
        return answers[-1]

    monkeypatch.setattr(hot_lane.HotLaneApplication, "heartbeat", heartbeat)

    def make():
        return hot_lane.HotLaneApplication(django_application())

    make.answers = answers
    return make


def test_the_wsgi_module_s_application_has_the_lane_in_front_of_django(monkeypatch):
    import importlib

    monkeypatch.setattr("orchestrator.heap.freeze_startup_heap", lambda: None)  # not this process's heap
    wsgi = importlib.import_module("orchestrator.wsgi")

    assert isinstance(wsgi.application, hot_lane.HotLaneApplication)
    assert wsgi.application.django_application is wsgi.django_application
    assert isinstance(wsgi.django_application, WSGIHandler)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("state", [State.RUNNING, State.CANCELLING])
def test_the_wsgi_lane_answers_a_beat_in_order_as_the_view_answers_it(ws, prefix, views, wsgi_lane, monkeypatch,
                                                                       state):
    app, lane_answers = wsgi_lane(), wsgi_lane.answers
    run = due_run(ws, state=state)
    path = f"{prefix}/agent/flow_runs/{run.pk}/heartbeat"
    by_lane = wsgi_answer(app, path, current_token(run))
    assert views == [] and lane_answers[0] is not None
    assert by_lane[0] == "200 OK" and json.loads(by_lane[2]) == {"state": state}
    beaten = FlowRun.objects.get(pk=run.pk).last_heartbeat
    assert beaten is not None
    monkeypatch.setattr(hot_lane, "flow_run_heartbeat", lambda *request: None)  # both lanes closed
    by_view = wsgi_answer(app, path, current_token(run))
    assert views == [run.pk]
    assert by_lane == by_view
    beats_behind.write_now()  # on PostgreSQL the second beat was answered from the view, written behind
    assert FlowRun.objects.get(pk=run.pk).last_heartbeat > beaten


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", ["plain HTTP to redirect", "a host not allowed", "a body", "a chunked body",
                                  "another run's token", "a query string", "another Accept"])
def test_the_wsgi_lane_leaves_to_django_what_its_middleware_or_view_must_answer(ws, prefix, wsgi_lane, settings,
                                                                                case):
    run, other = due_run(ws, state=State.RUNNING), due_run(ws, state=State.RUNNING)
    path, token, body, environ = f"{prefix}/agent/flow_runs/{run.pk}/heartbeat", current_token(run), b"", {}
    if case == "plain HTTP to redirect":
        settings.SECURE_SSL_REDIRECT = True
    elif case == "a host not allowed":
        environ["HTTP_HOST"] = "evil.example"
    elif case == "a body":
        body = b"{}"
    elif case == "a chunked body":
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    elif case == "another run's token":
        token = current_token(other)
    elif case == "another Accept":
        environ["HTTP_ACCEPT"] = "text/plain"
    else:
        path += "?x=1"
    app, lane_answers = wsgi_lane(), wsgi_lane.answers
    answer = wsgi_answer(app, path, token, body, **environ)
    assert lane_answers in ([], [None])  # not taken, or fell through
    assert answer == wsgi_answer(django_application(), path, token, body, **environ)
    expected = {"plain HTTP to redirect": "301", "a host not allowed": "400", "a body": "200",
                "a chunked body": "411", "another run's token": "403", "a query string": "200",
                "another Accept": "406"}[case]
    assert answer[0].split()[0] == expected


@pytest.mark.django_db(transaction=True)
def test_behind_a_tls_proxy_the_wsgi_lane_answers_with_the_security_headers(ws, prefix, views, wsgi_lane, settings,
                                                                           monkeypatch):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    app, lane_answers = wsgi_lane(), wsgi_lane.answers
    run = due_run(ws, state=State.RUNNING)
    path = f"{prefix}/agent/flow_runs/{run.pk}/heartbeat"
    by_lane = wsgi_answer(app, path, current_token(run), HTTP_X_FORWARDED_PROTO="https")
    assert views == [] and lane_answers[0] is not None
    assert ("Strict-Transport-Security", "max-age=3600") in by_lane[1]
    monkeypatch.setattr(hot_lane, "flow_run_heartbeat", lambda *request: None)
    assert wsgi_answer(app, path, current_token(run), HTTP_X_FORWARDED_PROTO="https") == by_lane
    assert views == [run.pk]


@pytest.mark.django_db(transaction=True)
def test_a_database_error_in_the_wsgi_lane_is_the_view_s_to_answer(ws, prefix, views, wsgi_lane, monkeypatch):
    app, lane_answers = wsgi_lane(), wsgi_lane.answers
    run = due_run(ws, state=State.RUNNING)

    def lost(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(agents.hot_sql, "beat_flow_run", lost)
    answer = wsgi_answer(app, f"{prefix}/agent/flow_runs/{run.pk}/heartbeat", current_token(run))
    assert lane_answers == [None] and views == [run.pk]
    assert answer[0].startswith("503")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="`closed` is psycopg's: sqlite3's connection has none")
@pytest.mark.django_db(transaction=True)
def test_the_wsgi_lane_replaces_a_connection_past_its_age_as_django_s_signals_would(ws, prefix, wsgi_lane,
                                                                                   monkeypatch):
    app, lane_answers = wsgi_lane(), wsgi_lane.answers
    run = due_run(ws, state=State.RUNNING)
    # Persistent connections, whatever a test before set (the browser tests' live server turns them off).
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 60)
    connection.close()
    connection.ensure_connection()
    old = connection.connection
    connection.close_at = time.monotonic() - 1  # past DATABASE_CONN_MAX_AGE
    answer = wsgi_answer(app, f"{prefix}/agent/flow_runs/{run.pk}/heartbeat", current_token(run))
    assert answer[0] == "200 OK" and lane_answers[0] is not None
    assert old.closed and connection.connection is not None and connection.connection is not old
    assert FlowRun.objects.get(pk=run.pk).last_heartbeat is not None


@pytest.mark.django_db(transaction=True)
def test_the_wsgi_lane_remembers_a_bounded_number_of_hosts(ws, prefix, wsgi_lane, monkeypatch):
    app = wsgi_lane()
    monkeypatch.setattr(hot_lane.HotLaneApplication, "READINGS", 3)
    run = due_run(ws, state=State.RUNNING)
    for n in range(7):
        answer = wsgi_answer(app, f"{prefix}/agent/flow_runs/{run.pk}/heartbeat", current_token(run),
                             HTTP_HOST=f"host-{n}.example")
        assert answer[0].startswith("400")
        assert len(app._readings) <= 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the beat's own transaction: PostgreSQL's")
def test_a_beat_s_statement_sets_its_transaction_s_commit_unflushed(ws):
    """The beat sets synchronous_commit off for its own transaction in its one statement; here, in
    the test's transaction, the setting is seen after it, and gone with the transaction."""
    from django.db import transaction

    from runs import hot_sql

    run = due_run(ws, state=State.RUNNING)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
        assert hot_sql.beat_flow_run(run.pk, ws.pk, timezone.now(), run.token_generation)[0] == State.RUNNING
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "off"
    assert hot_sql.beat_flow_run(run.pk, ws.pk, timezone.now(), run.token_generation + 1) is None


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a cursor of PostgreSQL's")
def test_a_server_bound_cursor_answers_as_django_s_and_raises_django_s_errors(ws):
    from django.db import DatabaseError

    from runs import hot_sql

    run = due_run(ws, state=State.RUNNING)
    sql = (f"SELECT id, scheduled_start, workspace_id FROM {FlowRun._meta.db_table} "
           f"WHERE id = %s AND workspace_id = %s AND state = %s")
    params = [run.pk, ws.pk, State.RUNNING]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        expected = cursor.fetchone()
    with hot_sql._server_bound(connection) as cursor:
        cursor.execute(sql, params)
        assert cursor.fetchone() == expected == (run.pk, run.scheduled_start, ws.pk)
    assert expected[1].tzinfo is not None
    with pytest.raises(DatabaseError), hot_sql._server_bound(connection) as cursor:
        cursor.execute(f"SELECT no_such_column FROM {FlowRun._meta.db_table}")


def test_the_middleware_lane_leaves_another_accept_to_the_view_s_negotiation(reporter, ws, prefix, views):
    run = due_run(ws, state=State.RUNNING)
    before = FlowRun.objects.get(pk=run.pk).last_heartbeat
    reporter.client.credentials(HTTP_AUTHORIZATION=f"Bearer {current_token(run)}")
    url = f"{prefix}/agent/flow_runs/{run.pk}/heartbeat"
    assert reporter.client.post(url, HTTP_ACCEPT="text/plain").status_code == 406
    assert FlowRun.objects.get(pk=run.pk).last_heartbeat == before  # refused before the view's work
    assert reporter.client.post(url, HTTP_ACCEPT="application/json").json() == {"state": "RUNNING"}
    assert views == []


@pytest.mark.django_db(transaction=True)
def test_a_beat_the_wsgi_lane_leaves_to_django_is_not_tried_again_by_the_middleware(ws, prefix, views, wsgi_lane,
                                                                                    monkeypatch):
    run = due_run(ws, state=State.RUNNING)
    stale = current_token(run)
    FlowRun.objects.filter(pk=run.pk).update(token_generation=run.token_generation + 1)
    tries, original = [], agents.hot_sql.beat_flow_run

    def beat_flow_run(*args):
        tries.append(args)
        return original(*args)

    monkeypatch.setattr(agents.hot_sql, "beat_flow_run", beat_flow_run)
    answer = wsgi_answer(wsgi_lane(), f"{prefix}/agent/flow_runs/{run.pk}/heartbeat", stale)
    assert answer[0].startswith("409") and b"superseded" in answer[2]
    assert wsgi_lane.answers == [None] and views == [run.pk]
    assert len(tries) == 2  # the WSGI lane's and the view's; not the middleware lane's as well


@pytest.mark.django_db(transaction=True)
def test_the_wsgi_lane_reads_each_scheme_apart(ws, prefix, wsgi_lane, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    app = wsgi_lane()
    run = due_run(ws, state=State.RUNNING)
    path = f"{prefix}/agent/flow_runs/{run.pk}/heartbeat"
    statuses = [wsgi_answer(app, path, current_token(run), **environ)[0].split()[0]
                for environ in ({"HTTP_X_FORWARDED_PROTO": "https"}, {}, {"HTTP_X_FORWARDED_PROTO": "http"},
                                {"HTTP_X_FORWARDED_PROTO": "https"})]
    assert statuses == ["200", "301", "301", "200"]
    assert [answer is not None for answer in wsgi_lane.answers] == [True, False, False, True]


@pytest.mark.django_db(transaction=True)
def test_without_persistent_connections_the_wsgi_lane_closes_its_connection_as_django_would(ws, prefix, wsgi_lane,
                                                                                          monkeypatch):
    run = due_run(ws, state=State.RUNNING)
    token = current_token(run)
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)
    connection.close()  # the next one opens with CONN_MAX_AGE 0: to be closed at the request's end
    answer = wsgi_answer(wsgi_lane(), f"{prefix}/agent/flow_runs/{run.pk}/heartbeat", token)
    assert answer[0] == "200 OK" and wsgi_lane.answers[0] is not None
    assert connection.connection is None
