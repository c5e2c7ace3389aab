"""Creating a run over the API (POST …/flow_runs/): its common request takes a short way (one query
for the flow, its latest version and the default queue, one INSERT for the run and its history;
issue 16), and answers and refuses exactly as the serializer's way does."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework import serializers

from runs import hot_sql
from runs.api.flow_runs import FlowRunCreateSerializer, plain_create_request
from runs.api.serializers import FlowRunSerializer, flow_run_data
from runs.models import Flow, FlowRun, Role, State, WorkQueue
from runs.scheduling import create_manual_run
from tests import factories
from tests.platform.test_postgres_backend import numbered, prepared_statements


def post(client, prefix, body):
    return client.post(f"{prefix}/flow_runs/", body, format="json")


def test_creating_a_run_takes_two_queries_on_postgresql(operator, prefix, ws, django_assert_max_num_queries):
    flow = factories.flow(ws)
    factories.work_queue(ws, name="default")  # made once per workspace, on its first run
    operator.get(f"{prefix}/ping")  # records the key's last use, at most once a minute
    # PostgreSQL: the lookup and one INSERT statement; SQLite: its two INSERTs in a savepoint besides.
    with django_assert_max_num_queries(2 if connection.vendor == "postgresql" else 5):
        created = post(operator, prefix, {"flow": flow.name, "idempotency_key": "q", "parameters": {"a": 1}})
    assert created.status_code == 201
    with django_assert_max_num_queries(4 if connection.vendor == "postgresql" else 6):
        again = post(operator, prefix, {"flow": flow.name, "idempotency_key": "q", "parameters": {"a": 1}})
    assert (again.status_code, again.json()) == (200, created.json())
    if connection.vendor == "postgresql":  # both prepared, so that PostgreSQL plans them once
        prepared = prepared_statements(connection)
        assert numbered(hot_sql._manual_run_target_sql("postgresql")) in prepared
        assert any(statement.startswith("WITH run AS (INSERT INTO") for statement in prepared)


def test_a_new_run_is_stored_with_its_history_as_the_answer_says(api, prefix, ws):
    flow = factories.flow(ws)
    person = factories.member(ws, role=Role.OPERATOR)
    client = api.as_key(factories.api_key(ws, role=Role.OPERATOR, user=person, name="laptop")[1])
    answer = post(client, prefix, {"flow": flow.name, "name": "by hand", "idempotency_key": "k"}).json()
    run = FlowRun.objects.select_related("flow", "work_queue", "agent", "created_by", "created_by_key").get()
    assert answer == FlowRunSerializer(run).data
    assert (run.state, run.name, run.flow_version, run.work_queue.name) == (
        State.SCHEDULED, "by hand", flow.latest_version, "default")
    history = run.history.get()
    assert (history.from_state, history.to_state, history.actor, history.user, history.message) == (
        "", State.SCHEDULED, "user", person, f"Created by {person.username} with API key laptop")
    assert history.timestamp == run.created == run.state_changed == run.scheduled_start


def test_parameters_are_merged_over_the_latest_versions_defaults(operator, prefix, ws):
    flow = factories.flow(ws)
    flow.register_version(entrypoint="tests.flows:noop", version="2", parameters={"day": "today", "full": False})
    answer = post(operator, prefix, {"flow": flow.name, "parameters": {"full": True, "extra": [1]}}).json()
    assert answer["parameters"] == {"day": "today", "full": True, "extra": [1]}
    assert answer["flow_version"] == flow.latest_version.pk
    assert FlowRun.objects.get().parameters == answer["parameters"]


def test_a_flow_without_a_version_makes_a_run_without_one(operator, prefix, ws):
    flow = Flow.objects.create(workspace=ws, name="bare")
    answer = post(operator, prefix, {"flow": flow.name})
    assert answer.status_code == 201 and answer.json()["flow_version"] is None


def test_a_workspace_without_its_default_queue_gets_one_on_its_first_run(operator, prefix, ws):
    flow = factories.flow(ws)
    assert not WorkQueue.objects.filter(workspace=ws).exists()
    answer = post(operator, prefix, {"flow": flow.name})
    assert answer.status_code == 201 and answer.json()["work_queue"] == "default"
    assert FlowRun.objects.get().work_queue == WorkQueue.objects.get(workspace=ws, name="default")


@pytest.mark.parametrize("name", ["no-such-flow", "deleted"])
def test_an_unknown_or_deleted_flow_is_a_400_naming_the_flow(operator, prefix, ws, name):
    flow = factories.flow(ws, name="deleted")
    Flow.all_objects.filter(pk=flow.pk).update(deleted_at=timezone.now())
    response = post(operator, prefix, {"flow": name, "idempotency_key": "k"})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"flow": [f"Object with name={name} does not exist."]}
    assert not FlowRun.objects.exists()


def test_a_key_used_in_another_workspace_makes_a_run_here(operator, prefix, ws, other_ws):
    theirs = factories.flow(other_ws, name="same")
    create_manual_run(theirs, idempotency_key="shared")
    answer = post(operator, prefix, {"flow": factories.flow(ws, name="same").name, "idempotency_key": "shared"})
    assert answer.status_code == 201
    assert FlowRun.objects.filter(idempotency_key="shared").count() == 2


def test_a_repeat_makes_no_second_history_row(operator, prefix, ws):
    flow = factories.flow(ws)
    first = post(operator, prefix, {"flow": flow.name, "idempotency_key": "k"}).json()
    FlowRun.objects.filter(pk=first["id"]).update(state=State.RUNNING)  # the answer is the run as it is now
    again = post(operator, prefix, {"flow": flow.name, "idempotency_key": "k", "parameters": {"other": 1}})
    assert (again.status_code, again.json()["state"], again.json()["parameters"]) == (200, "RUNNING", {})
    assert FlowRun.objects.get().history.count() == 1


def test_an_empty_key_from_another_door_is_no_key(ws):
    """The API refuses a blank key; the other callers of create_manual_run get two runs, as before."""
    flow = factories.flow(ws)
    runs = [create_manual_run(flow, idempotency_key="") for _ in range(2)]
    assert [created for _, created in runs] == [True, True]
    assert list(FlowRun.objects.values_list("idempotency_key", flat=True)) == [None, None]


# --- the short way reads a request as the serializer does -----------------------------------------

BODIES = [
    {"flow": "f"}, {"flow": "f", "idempotency_key": "k"}, {"flow": "f", "idempotency_key": None},
    {"flow": "f", "name": ""}, {"flow": "f", "name": "run", "parameters": {}},
    {"flow": "f", "parameters": {"a": None, "b": [1, {"c": ""}]}}, {"flow": "f", "work_queue": None},
    {"flow": "f", "unknown": "ignored"}, {"flow": "f", "idempotency_key": "k" * 200, "name": "n" * 200},
    {"flow": "f", "name": "\u00e9t\u00e9 \U0001f680"},
    # Each of these goes the serializer's way (None from plain_create_request).
    {"flow": ""}, {"flow": None}, {"flow": 5}, {"flow": ["f"]}, {}, {"flow": "f", "idempotency_key": ""},
    {"flow": "f", "idempotency_key": " k "}, {"flow": "f", "idempotency_key": "k" * 201},
    {"flow": "f", "idempotency_key": 7}, {"flow": "f", "idempotency_key": True}, {"flow": "f", "name": None},
    {"flow": "f", "name": " padded"}, {"flow": "f", "name": "n" * 201}, {"flow": "f", "name": 3},
    {"flow": "f", "name": "a\x00b"}, {"flow": "f", "parameters": None}, {"flow": "f", "parameters": [1]},
    {"flow": "f", "parameters": "{}"}, {"flow": "f", "work_queue": "default"},
    {"flow": "f", "scheduled_start": "2026-01-01T00:00:00Z"}, {"flow": "f", "scheduled_start": None},
    ["f"], "f", None,
]


@pytest.mark.parametrize("body", BODIES, ids=[repr(body)[:60] for body in BODIES])
def test_the_short_way_takes_a_request_only_as_the_serializer_would(rf, ws, body):
    factories.flow(ws, name="f")
    factories.work_queue(ws, name="default")
    request = rf.post("/")
    request.workspace = ws
    incoming = FlowRunCreateSerializer(data=body, context={"request": request})
    asked = plain_create_request(body)
    if asked is None:
        return  # the serializer's way: its answer, whatever it is
    assert incoming.is_valid(), incoming.errors
    expected = dict(incoming.validated_data)
    assert expected.pop("flow").name == asked.pop("flow")
    assert expected == {**asked, **({"work_queue": None} if "work_queue" in body else {})}


# --- the hand-written SQL and its ORM twins -------------------------------------------------------

def test_the_target_of_a_run_is_what_the_orm_reads(ws, other_ws):
    flow = factories.flow(ws)
    flow.register_version(entrypoint="tests.flows:noop", version="2", parameters={"x": 1})
    queue = factories.work_queue(ws, name="default")
    factories.flow(other_ws, name=flow.name)
    found_flow, version, found_queue = hot_sql.manual_run_target(ws.pk, flow.name, "default")
    assert (found_flow, found_flow.name, found_flow.workspace_id) == (flow, flow.name, ws.pk)
    assert (version, version.parameters) == (flow.latest_version, {"x": 1})
    assert (found_queue, found_queue.name) == (queue, "default")
    assert version.entrypoint == "tests.flows:noop"  # what it was not read with loads when read
    assert hot_sql.manual_run_target(ws.pk, flow.name, "gpu")[2] is None
    assert hot_sql.manual_run_target(ws.pk, "nope", "default") is None


def test_the_answer_of_a_run_is_what_its_declared_fields_render(ws):
    """flow_run_data, which every run answer goes through, against DRF's own walk of the fields."""
    flow = factories.flow(ws)
    person = factories.member(ws, role=Role.OPERATOR)
    key, _ = factories.api_key(ws, name="ci")
    schedule = factories.schedule(flow)
    now = timezone.now()
    runs = [
        create_manual_run(flow, user=person, api_key=key, parameters={"a": [1, None]}, idempotency_key="k")[0],
        factories.flow_run(flow, state=State.RUNNING, agent=factories.agent(ws), last_heartbeat=now,
                           run_count=2, lazarus_count=1, state_message="going"),
        factories.flow_run(flow, schedule=schedule, schedule_slug=schedule.slug, auto_scheduled=True,
                           scheduled_start=now + timedelta(hours=1), state=State.COMPLETED, end_time=now),
    ]
    walk = serializers.ModelSerializer.to_representation
    for run in runs:
        for shown in (run, FlowRun.objects.get(pk=run.pk)):
            assert flow_run_data(shown) == walk(FlowRunSerializer(), shown)
            assert list(flow_run_data(shown)) == FlowRunSerializer.Meta.fields


@pytest.mark.parametrize("length", [1, 193, 194, 200])
def test_a_run_of_a_flow_with_a_long_name_is_named_within_its_200_characters(operator, prefix, ws, length):
    """`<flow>-manual`, the flow's name cut to fit: a 194- to 200-character flow name was a 500 on
    PostgreSQL (the run's name is at most 200 characters; found by review, 2026-12-07)."""
    flow = factories.flow(ws, name="f" * length)
    answer = post(operator, prefix, {"flow": flow.name})
    assert answer.status_code == 201, answer.content
    name = answer.json()["name"]
    assert name.endswith("-manual") and len(name) == min(length + 7, 200)
    assert name[:-7] == flow.name[:193]
