"""Schemathesis against the live OpenAPI schema, every operation, valid and invalid input.

No input makes the API answer 5xx; every answer is one the schema documents (status code,
content type, body schema, headers); every 4xx has the one error form. Bounded: a few examples
per operation and mode, no deadline, no example database, so the module stays around a minute.
Hypothesis is derandomized: CI runs the same inputs every time, and a failure reproduces.
"""

import os
from collections import Counter

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runs.models import Role
from tests import factories

# FUZZ_EXAMPLES=200 FUZZ_RANDOM=1 make test PYTEST_ARGS=tests/api/test_fuzz_schema.py digs deeper, with new
# inputs each run; CI keeps the bounded, repeatable default.
SCALE = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
EXAMPLES = {GenerationMode.POSITIVE: SCALE or 8, GenerationMode.NEGATIVE: SCALE or 6}
REPEATABLE = os.environ.get("FUZZ_RANDOM", "") != "1"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture
def wsgi_keeps_the_test_connection():
    """Called through a bare WSGIHandler, Django would close the DB connection after each request
    and lose the test's transaction; its own test client switches this off the same way."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_target(db, wsgi_keeps_the_test_connection):
    """An admin key (and an agent key, for the agents' endpoints) of a workspace that has one of
    everything, so ids in paths sometimes exist."""
    ws = factories.workspace()
    flow = factories.flow(ws, name="fuzz-flow")
    queue = factories.work_queue(ws, name="fuzz-queue")
    run = factories.flow_run(flow, work_queue=queue)
    factories.task_run(run)
    factories.schedule(flow)
    factories.agent(ws).queues.add(queue)
    factories.member(ws, role=Role.ADMIN)
    key, secret = factories.api_key(ws, role=Role.ADMIN)
    return ws, key, secret, factories.api_key(ws, role=Role.AGENT)[1]


def operations():
    loaded = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    return [result.ok() for result in loaded.get_all_operations()]


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda mode: mode.value)
def test_no_input_makes_a_5xx_and_every_answer_is_documented(fuzz_target, mode):
    ws, key, secret, agent_secret = fuzz_target
    statuses, exercised = Counter(), set()
    every_operation = operations()

    for operation in every_operation:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=REPEATABLE,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            path = case.path_parameters or {}
            # Aim at the workspace we built; fuzzed account/workspace slugs would only ever be 404.
            if "account" in path:
                path["account"], path["workspace"] = ws.account.slug, ws.slug
            # Revoking the fuzzer's own key would turn the rest of the run into 401s.
            if case.method == "DELETE" and "/api_keys/" in case.path and str(path.get("id")) == str(key.pk):
                path["id"] = key.pk + 1_000_000
            bearer = agent_secret if "/agent/" in case.path else secret  # agents' endpoints take agent keys only
            response = case.call(headers={"Authorization": f"Bearer {bearer}"})
            where = f"{case.method} {case.formatted_path} {case.query} {case.body!r}"[:600]
            case.validate_response(response, checks=CHECKS)
            assert response.status_code != 401, f"{where}: the fuzzer's key stopped working"
            if 400 <= response.status_code < 500:
                body = response.json()
                assert set(body["error"]) == {"code", "message", "fields"}, f"{where}: {body}"
            statuses[response.status_code] += 1
            exercised.add(operation.label)

        call()
    print(mode.value, sorted(statuses.items()))
    assert exercised == {operation.label for operation in every_operation}
    assert len(every_operation) >= 58
    if mode == GenerationMode.POSITIVE:
        assert sum(count for code, count in statuses.items() if code < 300) >= 50  # it reached real work
