"""The hot lane (runs/api/hot_lane.py): a flow run's heartbeat that is in order is answered before
URL resolution and DRF, with exactly the answer the API's view gives; anything else falls through
to the view, which answers it as it always did."""

import uuid

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from runs.api import agents, hot_lane
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
    monkeypatch.setattr(hot_lane, "flow_run_heartbeat", lambda request: None)  # the lane closed
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

    def lane(request):
        lane_answers.append(original(request))
        return lane_answers[-1]

    monkeypatch.setattr(hot_lane, "flow_run_heartbeat", lane)
    by_lane = []
    for name, run_id, token, prefix, query in cases:
        lane_answers.clear()
        by_lane.append(answer_of(beat(reporter.client, prefix, run_id, token, query)))
        assert lane_answers == [None], name
    monkeypatch.setattr(hot_lane, "flow_run_heartbeat", lambda request: None)
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
    assert [q["sql"].split()[0] for q in captured.captured_queries] == ["SET"]
