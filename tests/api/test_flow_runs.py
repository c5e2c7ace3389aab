"""Flow runs over the API: idempotent creation, filters, cursor pages, set state, cancel, retry."""

import re
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from runs import hot_sql
from runs.models import TERMINAL_STATES, Actor, FlowRun, Role, State, StateChange
from runs.states import StaleTransition, set_flow_run_state
from tests import factories


def test_same_idempotency_key_twice_creates_one_run(operator, prefix, ws):
    flow = factories.flow(ws)
    body = {"flow": flow.name, "idempotency_key": "build-4711", "parameters": {"day": "monday"}}
    first = operator.post(f"{prefix}/flow_runs/", body, format="json")
    second = operator.post(f"{prefix}/flow_runs/", body, format="json")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert FlowRun.objects.filter(workspace=ws).count() == 1


def test_runs_without_a_key_are_each_new(operator, prefix, ws):
    flow = factories.flow(ws)
    for _ in range(2):
        assert operator.post(f"{prefix}/flow_runs/", {"flow": flow.name}, format="json").status_code == 201
    assert FlowRun.objects.filter(workspace=ws).count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_requests_with_one_key_create_one_run(ws, key_for):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL's concurrent transactions")
    flow = factories.flow(ws)
    secret, path = key_for(Role.OPERATOR), f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}/flow_runs/"
    barrier, statuses = threading.Barrier(2), []

    def create():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        barrier.wait()
        statuses.append(client.post(path, {"flow": flow.name, "idempotency_key": "race"}, format="json").status_code)
        connection.close()

    threads = [threading.Thread(target=create) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(statuses) == [200, 201]
    assert FlowRun.objects.filter(workspace=ws, idempotency_key="race").count() == 1


def test_list_filters_by_state_flow_time_and_auto_scheduled(operator, prefix, ws):
    flow, other = factories.flow(ws), factories.flow(ws)
    now = timezone.now()
    wanted = factories.flow_run(flow, state=State.FAILED, scheduled_start=now - timedelta(hours=1))
    factories.flow_run(flow, state=State.FAILED, scheduled_start=now - timedelta(days=2))
    factories.flow_run(flow, state=State.COMPLETED, scheduled_start=now - timedelta(hours=1))
    factories.flow_run(other, state=State.FAILED, scheduled_start=now - timedelta(hours=1))
    after = (now - timedelta(hours=3)).isoformat()
    response = operator.get(f"{prefix}/flow_runs/", {"state": "failed,crashed", "flow": flow.name,
                                                     "scheduled_after": after, "auto_scheduled": "false"})
    assert [r["id"] for r in response.json()["results"]] == [str(wanted.pk)]


def test_bad_filters_are_400_naming_the_parameter(operator, prefix):
    for params, field in [({"state": "SLEEPING"}, "state"), ({"scheduled_after": "yesterday"}, "scheduled_after"),
                          ({"auto_scheduled": "maybe"}, "auto_scheduled"), ({"ordering": "name"}, "ordering")]:
        response = operator.get(f"{prefix}/flow_runs/", params)
        assert response.status_code == 400
        assert field in response.json()["error"]["fields"]


def test_cursor_pages_are_stable_when_runs_are_added(operator, prefix, ws):
    flow = factories.flow(ws)
    runs = [factories.flow_run(flow, created=timezone.now() - timedelta(minutes=i)) for i in range(5)]
    page = operator.get(f"{prefix}/flow_runs/", {"page_size": 2}).json()
    factories.flow_run(flow)  # newest: must not shift the next page
    second = operator.get(page["next"]).json()
    assert [r["id"] for r in second["results"]] == [str(runs[2].pk), str(runs[3].pk)]


def test_detail_shows_history_and_set_state_records_the_user(api, prefix, ws):
    person = factories.member(ws, role=Role.OPERATOR)
    key = factories.api_key(ws, role=Role.OPERATOR, user=person)[1]
    run = factories.flow_run(factories.flow(ws), state=State.RUNNING)
    response = api.as_key(key).post(f"{prefix}/flow_runs/{run.pk}/set_state/", {"state": "FAILED",
                                                                              "message": "by hand"}, format="json")
    assert response.status_code == 200
    last = response.json()["history"][-1]
    assert (last["to_state"], last["actor"], last["user"], last["message"]) == ("FAILED", "user", str(person),
                                                                                "by hand")


def test_illegal_transition_is_409_with_current_state(operator, prefix, ws):
    run = factories.flow_run(factories.flow(ws), state=State.COMPLETED)
    response = operator.post(f"{prefix}/flow_runs/{run.pk}/set_state/", {"state": "RUNNING"}, format="json")
    assert response.status_code == 409
    assert response.json()["current_state"] == "COMPLETED"


def test_cancel_before_start_cancels_and_after_start_asks_the_agent(operator, prefix, ws):
    flow = factories.flow(ws)
    waiting, running = factories.flow_run(flow), factories.flow_run(flow, state=State.RUNNING)
    assert operator.post(f"{prefix}/flow_runs/{waiting.pk}/cancel/").json()["state"] == "CANCELLED"
    assert operator.post(f"{prefix}/flow_runs/{running.pk}/cancel/").json()["state"] == "CANCELLING"


def test_retry_schedules_a_finished_run_now_and_refuses_a_running_one(operator, prefix, ws):
    flow = factories.flow(ws)
    failed = factories.flow_run(flow, state=State.FAILED, scheduled_start=timezone.now() - timedelta(days=1))
    body = operator.post(f"{prefix}/flow_runs/{failed.pk}/retry/").json()
    assert body["state"] == "SCHEDULED"
    assert timezone.now() - timedelta(minutes=1) < FlowRun.objects.get(pk=failed.pk).scheduled_start
    running = factories.flow_run(flow, state=State.RUNNING)
    assert operator.post(f"{prefix}/flow_runs/{running.pk}/retry/").status_code == 409


def test_run_of_another_workspace_is_404(operator, prefix, other_ws):
    run = factories.flow_run(factories.flow(other_ws))
    assert operator.get(f"{prefix}/flow_runs/{run.pk}/").status_code == 404
    assert operator.post(f"{prefix}/flow_runs/", {"flow": run.flow.name}, format="json").status_code == 400


def test_list_runs_in_constant_queries(operator, prefix, ws, django_assert_max_num_queries):
    flow = factories.flow(ws)
    for _ in range(20):
        factories.flow_run(flow)
    with django_assert_max_num_queries(6):
        assert len(operator.get(f"{prefix}/flow_runs/").json()["results"]) == 20


@pytest.mark.parametrize("value, expected", [
    ("0093-08-08T07:46:13+21:52", 200),  # an offset PostgreSQL refuses; fine once in UTC
    ("0001-01-01T00:10:00+01:00", 400),  # before year 1 in UTC
    ("9999-12-31T23:59:00-01:00", 400),  # after year 9999 in UTC
])
def test_time_filters_take_any_offset_and_refuse_times_outside_utc(operator, prefix, value, expected):
    response = operator.get(f"{prefix}/flow_runs/", {"scheduled_after": value})
    assert response.status_code == expected, response.content
    if expected == 400:
        assert "scheduled_after" in response.json()["error"]["fields"]


def test_an_idempotency_key_of_a_deleted_run_is_409_asking_for_a_new_key(operator, prefix, ws):
    flow = factories.flow(ws)
    first = operator.post(f"{prefix}/flow_runs/", {"flow": flow.name, "idempotency_key": "k1"}, format="json")
    FlowRun.objects.filter(pk=first.json()["id"]).update(deleted_at=timezone.now())
    again = operator.post(f"{prefix}/flow_runs/", {"flow": flow.name, "idempotency_key": "k1"}, format="json")
    assert again.status_code == 409 and "new key" in again.json()["error"]["message"]
    assert FlowRun.objects.filter(workspace=ws).count() == 1
    fresh = operator.post(f"{prefix}/flow_runs/", {"flow": flow.name, "idempotency_key": "k2"}, format="json")
    assert fresh.status_code == 201


def test_creating_and_moving_a_run_take_a_fixed_number_of_queries(operator, prefix, ws, django_assert_max_num_queries):
    flow = factories.flow(ws)
    factories.work_queue(ws, name="default")  # made once per workspace, on its first run
    operator.get(f"{prefix}/ping")  # records the key's last use, at most once a minute
    with django_assert_max_num_queries(11):
        created = operator.post(f"{prefix}/flow_runs/", {"flow": flow.name, "idempotency_key": "q"}, format="json")
    with django_assert_max_num_queries(10):
        moved = operator.post(f"{prefix}/flow_runs/{created.json()['id']}/set_state/", {"state": "CANCELLED"},
                              format="json")
    assert moved.status_code == 200 and moved.json()["history"][-1]["to_state"] == "CANCELLED"


def test_a_run_made_with_a_service_key_names_the_key_as_its_creator(api, prefix, ws):
    flow = factories.flow(ws)
    ci = api.as_key(factories.api_key(ws, role=Role.OPERATOR, name="ci-deploys")[1])
    answer = ci.post(f"{prefix}/flow_runs/", {"flow": flow.name}, format="json").json()
    assert (answer["created_by"], answer["created_by_key"]) == (None, "ci-deploys")
    detail = ci.get(f"{prefix}/flow_runs/{answer['id']}/").json()
    assert detail["created_by_key"] == "ci-deploys"
    assert detail["history"][0]["message"] == "Created with API key ci-deploys"
    listed = ci.get(f"{prefix}/flow_runs/").json()["results"]
    assert [run["created_by_key"] for run in listed] == ["ci-deploys"]


def test_a_run_made_with_a_persons_key_names_both(api, prefix, ws):
    flow = factories.flow(ws)
    person = factories.member(ws, role=Role.OPERATOR)
    own = api.as_key(factories.api_key(ws, role=Role.OPERATOR, user=person, name="laptop")[1])
    answer = own.post(f"{prefix}/flow_runs/", {"flow": flow.name}, format="json").json()
    assert (answer["created_by"], answer["created_by_key"]) == (person.username, "laptop")
    run = FlowRun.objects.get(pk=answer["id"])
    assert run.history.get().message == f"Created by {person.username} with API key laptop"


def test_a_run_made_in_a_browser_session_names_its_person_and_no_key(api, prefix, ws):
    flow = factories.flow(ws)
    person = factories.member(ws, role=Role.OPERATOR)
    api.force_authenticate(person)  # a browser session: no key
    answer = api.post(f"{prefix}/flow_runs/", {"flow": flow.name}, format="json").json()
    assert (answer["created_by"], answer["created_by_key"]) == (person.username, None)


def test_a_state_change_answers_as_the_detail_does_in_few_queries(operator, prefix, ws,
                                                                   django_assert_max_num_queries):
    person = factories.member(ws, role=Role.OPERATOR)
    queue, agent = factories.work_queue(ws, name="gpu"), factories.agent(ws)
    run = factories.flow_run(factories.flow(ws), state=State.SCHEDULED, work_queue=queue, created_by=person)
    # A history to answer with, by an agent and a person: SCHEDULED -> SUBMITTED -> RUNNING.
    set_flow_run_state(run, State.SUBMITTED, actor=Actor.AGENT, agent=agent, updates={"agent": agent})
    set_flow_run_state(run, State.RUNNING, actor=Actor.USER, user=person)
    operator.get(f"{prefix}/ping")  # the key is verified (and cached) before the count
    # The run with what it names, in one query; in a savepoint the conditional update (returning the
    # run's new columns), its history row and (no Redis) its event's buffer row; the history with its
    # people's and agents' names. No re-read of the run (was 8; 11 before that). On PostgreSQL with
    # Redis: 5 (the update and the history row are one statement, the event goes to Redis).
    with django_assert_max_num_queries(7):
        changed = operator.post(f"{prefix}/flow_runs/{run.pk}/set_state/", {"state": "FAILED", "message": "by hand"},
                                format="json")
    assert changed.status_code == 200
    assert changed.json() == operator.get(f"{prefix}/flow_runs/{run.pk}/").json()
    answer = changed.json()
    assert (answer["state"], answer["work_queue"], answer["agent"], answer["created_by"]) == (
        "FAILED", "gpu", agent.name, str(person))
    assert [(h["to_state"], h["agent"], h["user"]) for h in answer["history"]] == [
        ("SUBMITTED", agent.name, None), ("RUNNING", None, str(person)), ("FAILED", None, None)]


def test_the_history_a_move_answers_with_is_the_history_read_after_it(ws):
    """set_flow_run_state(history=True) reads the history with the move (one statement on
    PostgreSQL, runs/hot_sql.py): the same rows, names, times and order as run_history() after it,
    ties in time ordered by id, the new row last."""
    person, agent = factories.member(ws, role=Role.OPERATOR), factories.agent(ws, name="gpu-1")
    run = factories.flow_run(factories.flow(ws), state=State.SCHEDULED)
    set_flow_run_state(run, State.SUBMITTED, actor=Actor.AGENT, agent=agent, updates={"agent": agent})
    set_flow_run_state(run, State.RUNNING, actor=Actor.USER, user=person, message='quoted "text", café ☃')
    tie = timezone.now().replace(microsecond=123456)
    StateChange.objects.filter(flow_run=run).update(timestamp=tie)  # two rows at one time: by id
    moved, history = set_flow_run_state(run, State.FAILED, actor=Actor.USER, user=person, message="by hand",
                                        now=tie + timedelta(microseconds=1), history=True)
    assert moved.state == State.FAILED
    assert history == hot_sql.run_history(run.pk)
    assert [(h["from_state"], h["to_state"], h["user"], h["agent"]) for h in history] == [
        ("SCHEDULED", "SUBMITTED", None, "gpu-1"), ("SUBMITTED", "RUNNING", person.username, None),
        ("RUNNING", "FAILED", person.username, None)]
    assert [h["timestamp"] for h in history] == [tie, tie, tie + timedelta(microseconds=1)]
    assert history[1]["message"] == 'quoted "text", café ☃'


def test_a_move_that_finds_the_run_moved_answers_no_history(ws):
    run = factories.flow_run(factories.flow(ws), state=State.RUNNING)
    with pytest.raises(StaleTransition):
        set_flow_run_state(run, State.FAILED, actor=Actor.USER, expected_state=State.SCHEDULED, history=True)
    assert FlowRun.objects.get(pk=run.pk).state == State.RUNNING and not StateChange.objects.filter(
        flow_run=run, to_state=State.FAILED).exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the state change in one statement: PostgreSQL's")
def test_on_postgresql_a_state_change_is_one_statement_and_a_cancel_two(operator, prefix, ws):
    """set_state finds, moves and answers in one statement (runs/states.py set_listed_flow_run_state);
    cancel reads the run first (its target depends on the state), then moves it with its history."""
    run, other = (factories.flow_run(factories.flow(ws), state=State.RUNNING) for _ in range(2))
    operator.get(f"{prefix}/ping")  # the key is verified (and cached) before the count
    for path, body, first in [(f"{run.pk}/set_state/", {"state": "FAILED"}, []),
                              (f"{other.pk}/cancel/", None, ["SELECT"])]:
        with CaptureQueriesContext(connection) as captured:
            changed = operator.post(f"{prefix}/flow_runs/{path}", body, format="json")
        assert changed.status_code == 200 and changed.json()["history"][-1]["from_state"] == "RUNNING"
        # The test's transaction makes the move's a savepoint; without Redis its event's buffer row
        # is written in it too (events/emit.py). No statement reads the history after the move.
        statements = [re.search(r"\b(SELECT|WITH|INSERT|UPDATE)\b", q["sql"])[0] for q in captured.captured_queries
                      if "SAVEPOINT" not in q["sql"]]
        assert statements == [*first, "WITH"] + ([] if settings.REDIS_URL else ["INSERT"])


@pytest.mark.parametrize("from_state, body", [
    (State.RUNNING, {"state": "FAILED", "message": "by hand"}),
    (State.RUNNING, {"state": "COMPLETED", "expected_state": "RUNNING"}),
    (State.SCHEDULED, {"state": "CANCELLED"}),
    (State.LATE, {"state": "FAILED"}),
    (State.SUBMITTED, {"state": "CRASHED"}),
    (State.RUNNING, {"state": "CANCELLING"}),
    (State.RUNNING, {"state": "PAUSED"}),
    (State.SCHEDULED, {"state": "LATE"}),
    (State.PAUSED, {"state": "RUNNING"}),  # the general path: entering RUNNING counts an attempt
    (State.RUNNING, {"state": "SCHEDULED"}),  # and a new attempt
])
def test_a_state_change_moves_answers_and_records_as_the_rules_say(operator, prefix, ws, from_state, body,
                                                                   flush_events):
    person = factories.member(ws, role=Role.OPERATOR)
    queue, agent = factories.work_queue(ws, name="gpu"), factories.agent(ws)
    flow = factories.flow(ws)
    run = factories.flow_run(flow, state=from_state, work_queue=queue, agent=agent, created_by=person,
                             schedule=factories.schedule(flow), start_time=timezone.now() - timedelta(minutes=5))
    before = FlowRun.objects.get(pk=run.pk)
    changed = operator.post(f"{prefix}/flow_runs/{run.pk}/set_state/", body, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json() == operator.get(f"{prefix}/flow_runs/{run.pk}/").json()
    after = FlowRun.objects.get(pk=run.pk)
    to_state = body["state"]
    assert after.state == to_state and after.state_message == body.get("message", "")
    assert (after.end_time is not None) == (to_state in TERMINAL_STATES)
    assert after.run_count == before.run_count + (to_state == State.RUNNING)
    assert after.token_generation == before.token_generation + (to_state == State.SCHEDULED)
    assert list(run.history.values_list("from_state", "to_state", "actor")) == [(from_state, to_state, Actor.USER)]
    [event] = flush_events().filter(name=f"flow-run.state.{to_state.lower()}")
    assert event.resource == {"kind": "flow-run", "id": str(run.pk)}
    assert event.payload == {"from": from_state, "to": to_state, "message": body.get("message", ""),
                             "actor": Actor.USER}
    assert {(r["kind"], r["id"]) for r in event.related} == {
        ("flow", str(run.flow_id)), ("schedule", str(run.schedule_id)), ("work-queue", str(queue.pk)),
        ("agent", str(agent.pk))}


@pytest.mark.parametrize("from_state, body, code, current", [
    (State.COMPLETED, {"state": "FAILED"}, "illegal_transition", "COMPLETED"),
    (State.SCHEDULED, {"state": "COMPLETED"}, "illegal_transition", "SCHEDULED"),
    (State.RUNNING, {"state": "FAILED", "expected_state": "SCHEDULED"}, "stale_transition", "RUNNING"),
    (State.RUNNING, {"state": "FAILED", "expected_state": "COMPLETED"}, "illegal_transition", "COMPLETED"),
    (State.FAILED, {"state": "CANCELLED", "expected_state": "RUNNING"}, "stale_transition", "FAILED"),
])
def test_a_refused_state_change_is_a_409_naming_the_state_and_changes_nothing(operator, prefix, ws, from_state, body,
                                                                              code, current, flush_events):
    run = factories.flow_run(factories.flow(ws), state=from_state)
    refused = operator.post(f"{prefix}/flow_runs/{run.pk}/set_state/", body, format="json")
    assert refused.status_code == 409
    assert (refused.json()["error"]["code"], refused.json()["current_state"]) == (code, current)
    assert FlowRun.objects.get(pk=run.pk).state == from_state and not run.history.exists()
    assert not flush_events().filter(name__startswith="flow-run.state.").exists()


def test_a_bad_body_for_a_run_that_is_not_there_is_a_404(operator, prefix, ws):
    run = factories.flow_run(factories.flow(ws), state=State.RUNNING)
    missing = "00000000-0000-0000-0000-000000000000"
    for body in [{"state": "SLEEPING"}, {"message": "no state"}]:
        assert operator.post(f"{prefix}/flow_runs/{missing}/set_state/", body, format="json").status_code == 404
        refused = operator.post(f"{prefix}/flow_runs/{run.pk}/set_state/", body, format="json")
        assert refused.status_code == 400 and "state" in refused.json()["error"]["fields"]


def test_a_permission_that_checks_the_run_is_asked_before_it_moves(operator, prefix, ws, monkeypatch):
    """The one-statement change reads no run to check: a permission class that looks at the run
    (has_object_permission) sends the request the general way, which asks it first."""
    from rest_framework import permissions

    from runs.api.flow_runs import FlowRunViewSet

    class NotThisRun(permissions.BasePermission):
        def has_object_permission(self, request, view, obj):
            return obj.pk != run.pk

    run, other = (factories.flow_run(factories.flow(ws), state=State.RUNNING) for _ in range(2))
    monkeypatch.setattr(FlowRunViewSet, "permission_classes", [*FlowRunViewSet.permission_classes, NotThisRun])
    assert operator.post(f"{prefix}/flow_runs/{run.pk}/set_state/", {"state": "FAILED"},
                         format="json").status_code == 403
    assert operator.post(f"{prefix}/flow_runs/{other.pk}/set_state/", {"state": "FAILED"},
                         format="json").status_code == 200
    assert [FlowRun.objects.get(pk=r.pk).state for r in (run, other)] == [State.RUNNING, State.FAILED]


def _waiting_for_a_lock(timeout=10.0):
    """Wait until a session of the test database waits for a lock (a request blocked on a row)."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError("no session waited for the lock")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("meanwhile, answer", [("PAUSED", 409), ("COMPLETED", 409), ("RUNNING", 200)])
def test_a_state_change_that_meets_a_move_in_flight_is_refused_as_stale(ws, key_for, meanwhile, answer):
    """Another transaction moves the run while the request's statement waits for its row: the
    request is a 409 naming where the run went, even where that state could also move to the one
    asked for (PAUSED → FAILED), as when the run was read before its move; nothing of it is written.
    (Moved back to the state it had: the request goes through, as it would have.)"""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL's concurrent transactions")
    secret, prefix = key_for(Role.OPERATOR), f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}"
    run = factories.flow_run(factories.flow(ws), state=State.RUNNING)
    other = type(connections["default"])({**connection.settings_dict}, alias="meanwhile")
    answers = []

    def change():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        try:
            answers.append(client.post(f"{prefix}/flow_runs/{run.pk}/set_state/", {"state": "FAILED"}, format="json"))
        finally:
            connection.close()

    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute("UPDATE runs_flowrun SET state = %s WHERE id = %s", [meanwhile, run.pk])
        request = threading.Thread(target=change)
        request.start()
        _waiting_for_a_lock()
        other.commit()
        request.join(timeout=30)
    finally:
        other.close()
    [response] = answers
    assert response.status_code == answer, response.json()
    if answer == 409:
        assert (response.json()["error"]["code"], response.json()["current_state"]) == ("stale_transition", meanwhile)
        assert FlowRun.objects.get(pk=run.pk).state == meanwhile and not run.history.exists()
    else:
        assert list(run.history.values_list("from_state", "to_state")) == [("RUNNING", "FAILED")]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_without_redis_a_state_changes_event_is_written_in_its_transaction(ws, key_for, settings, monkeypatch):
    """The embedded mode (no Redis): the event's buffer row is written in the move's own
    transaction, so that both commit or neither; another connection sees neither before the commit."""
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement change is PostgreSQL's")
    from events import buffer

    settings.REDIS_URL = ""
    secret, prefix = key_for(Role.OPERATOR), f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}"
    run = factories.flow_run(factories.flow(ws), state=State.RUNNING)
    seen, insert_pending = [], buffer.insert_pending

    def watched(db, events):
        other = type(connections["default"])({**connection.settings_dict}, alias="watching")
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT state FROM runs_flowrun WHERE id = %s", [run.pk])
                seen.append((db.in_atomic_block, cursor.fetchone()[0], [event["name"] for event in events]))
        finally:
            other.close()
        return insert_pending(db, events)

    monkeypatch.setattr(buffer, "insert_pending", watched)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.post(f"{prefix}/flow_runs/{run.pk}/set_state/", {"state": "FAILED"}, format="json").status_code == 200
    assert seen == [(True, "RUNNING", ["flow-run.state.failed"])]  # written before the move was committed
    assert FlowRun.objects.get(pk=run.pk).state == State.FAILED


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_state_changes_of_one_run_move_it_once(ws, key_for, flush_events):
    """Two people move one run at once, ten times over: one move wins, the other is a 409 naming the
    state the winner left; one history row and one event per run."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL's concurrent transactions")
    secret, prefix = key_for(Role.OPERATOR), f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}"
    runs = [factories.flow_run(factories.flow(ws), state=State.RUNNING) for _ in range(10)]
    answers = []

    def change(run, to_state, barrier):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        try:
            barrier.wait()
            answer = client.post(f"{prefix}/flow_runs/{run.pk}/set_state/", {"state": to_state}, format="json")
            answers.append((run.pk, to_state, answer.status_code, answer.json()))
        finally:
            connection.close()

    for run in runs:
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=change, args=(run, to_state, barrier)) for to_state in ("FAILED", "CANCELLED")]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert len(answers) == 20
    for run in runs:
        mine = [a for a in answers if a[0] == run.pk]
        won = [a for a in mine if a[2] == 200]
        lost = [a for a in mine if a[2] != 200]
        assert len(won) == 1 and len(lost) == 1, mine
        assert lost[0][2] == 409 and lost[0][3]["current_state"] == won[0][1]
        assert FlowRun.objects.get(pk=run.pk).state == won[0][1]
        assert list(StateChange.objects.filter(flow_run=run).values_list("from_state", "to_state")) == [
            ("RUNNING", won[0][1])]
    moves = flush_events().filter(name__in=["flow-run.state.failed", "flow-run.state.cancelled"])
    assert sorted(str(e.resource["id"]) for e in moves) == sorted(str(run.pk) for run in runs)


def test_a_state_change_finds_only_what_the_detail_finds(operator, prefix, ws, other_ws):
    """set_state reads the run by hand (runs/hot_sql.py): a run the detail does not show is a 404 there too."""
    flow = factories.flow(ws)
    deleted_flow, deleted_schedule = factories.flow(ws), factories.schedule(factories.flow(ws))
    hidden = [
        factories.flow_run(factories.flow(other_ws), state=State.RUNNING),
        factories.flow_run(flow, state=State.RUNNING, deleted_at=timezone.now()),
        factories.flow_run(deleted_flow, state=State.RUNNING),
        factories.flow_run(deleted_schedule.flow, schedule=deleted_schedule, state=State.RUNNING),
    ]
    deleted_flow.__class__.all_objects.filter(pk=deleted_flow.pk).update(deleted_at=timezone.now())
    deleted_schedule.__class__.all_objects.filter(pk=deleted_schedule.pk).update(deleted_at=timezone.now())
    for run_id in [*(run.pk for run in hidden), "not-a-uuid", "00000000-0000-0000-0000-000000000000"]:
        detail = operator.get(f"{prefix}/flow_runs/{run_id}/")
        moved = operator.post(f"{prefix}/flow_runs/{run_id}/set_state/", {"state": "FAILED"}, format="json")
        assert (moved.status_code, moved.json()) == (detail.status_code, detail.json()) == (404, detail.json())
    assert all(FlowRun.objects.get(pk=run.pk).state == State.RUNNING for run in hidden)
    shown = factories.flow_run(flow, schedule=factories.schedule(flow), state=State.RUNNING)  # its schedule is live
    assert operator.post(f"{prefix}/flow_runs/{shown.pk}/set_state/", {"state": "FAILED"},
                         format="json").status_code == 200


@pytest.mark.parametrize("body", [
    {"state": "FAILED"},
    {"state": "FAILED", "message": "  by hand \n"},
    {"state": "FAILED", "message": "   "},
    {"state": "FAILED", "message": "x" * 2000},
    {"state": "FAILED", "message": " " + "x" * 2000 + " "},
    {"state": "FAILED", "message": "x" * 2001},
    {"state": "FAILED", "message": "café, ☃"},
    {"state": "FAILED", "message": "nul \x00 inside"},
    {"state": "FAILED", "message": 42},
    {"state": "FAILED", "message": None},
    {"state": "FAILED", "message": True},
    {"state": "FAILED", "expected_state": "RUNNING"},
    {"state": "FAILED", "expected_state": None},
    {"state": "FAILED", "expected_state": "running"},
    {"state": "failed"},
    {"state": ""},
    {"state": None},
    {"state": ["FAILED"]},
    {"message": "no state"},
    {"state": "FAILED", "unknown": 1},
    [],
])
def test_a_plain_state_body_reads_as_the_serializer_reads_it(body):
    """SetStateSerializer.validated reads plain bodies itself: the same data, or the serializer's own 400."""
    from rest_framework.exceptions import ValidationError

    from runs.api.flow_runs import SetStateSerializer

    incoming = SetStateSerializer(data=body)
    if incoming.is_valid():
        assert SetStateSerializer.validated(body) == dict(incoming.validated_data)
    else:
        with pytest.raises(ValidationError) as refused:
            SetStateSerializer.validated(body)
        assert refused.value.detail == incoming.errors


def test_a_state_change_names_an_agent_that_claimed_the_run_meanwhile(operator, prefix, ws, monkeypatch):
    """The names read with the run stand only for the ids the move left alone: one that changed
    between the read and the move (a claim) is read again, so the answer still agrees with the detail.
    (A cancel reads the run before it moves it; set_state's one statement names what it moved.)"""
    from runs import hot_sql

    first, second = factories.agent(ws), factories.agent(ws)
    run = factories.flow_run(factories.flow(ws), state=State.RUNNING, agent=first)
    read = hot_sql.run_to_change

    def read_then_claim(run_id, workspace_id):
        found = read(run_id, workspace_id)
        FlowRun.objects.filter(pk=run_id).update(agent=second)
        return found

    monkeypatch.setattr(hot_sql, "run_to_change", read_then_claim)
    changed = operator.post(f"{prefix}/flow_runs/{run.pk}/cancel/")
    assert changed.status_code == 200 and changed.json()["agent"] == second.name
    assert changed.json()["state"] == State.CANCELLING
    assert changed.json() == operator.get(f"{prefix}/flow_runs/{run.pk}/").json()


def test_cancel_and_retry_answer_as_the_detail_does(operator, prefix, ws):
    flow = factories.flow(ws)
    waiting, failed = factories.flow_run(flow), factories.flow_run(flow, state=State.FAILED)
    cancelled = operator.post(f"{prefix}/flow_runs/{waiting.pk}/cancel/")
    retried = operator.post(f"{prefix}/flow_runs/{failed.pk}/retry/")
    assert cancelled.json() == operator.get(f"{prefix}/flow_runs/{waiting.pk}/").json()
    assert retried.json() == operator.get(f"{prefix}/flow_runs/{failed.pk}/").json()
    assert (cancelled.json()["state"], retried.json()["state"]) == ("CANCELLED", "SCHEDULED")


def test_a_stale_expected_state_is_409_and_changes_nothing(operator, prefix, ws):
    run = factories.flow_run(factories.flow(ws), state=State.RUNNING)
    response = operator.post(f"{prefix}/flow_runs/{run.pk}/set_state/",
                             {"state": "FAILED", "expected_state": "SCHEDULED"}, format="json")
    assert response.status_code == 409 and response.json()["current_state"] == "RUNNING"
    assert run.history.count() == 0 and FlowRun.objects.get(pk=run.pk).state == State.RUNNING
