"""Schemathesis against the live OpenAPI schema: no input makes the API answer 5xx, and every 4xx
answer has the one error form. Bounded: a few examples per operation, no deadline, no example
database, so the whole module stays around a minute or two."""

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings

from runs.models import Role
from tests import factories

EXAMPLES_PER_OPERATION = 10


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
    """An admin key of a workspace that has one of everything, so ids in paths sometimes exist."""
    ws = factories.workspace()
    flow = factories.flow(ws, name="fuzz-flow")
    queue = factories.work_queue(ws, name="fuzz-queue")
    run = factories.flow_run(flow, work_queue=queue)
    factories.task_run(run)
    factories.schedule(flow)
    factories.member(ws, role=Role.ADMIN)
    return ws, factories.api_key(ws, role=Role.ADMIN)[1]


def operations():
    loaded = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    return [result.ok() for result in loaded.get_all_operations()]


def test_no_input_makes_a_5xx_and_every_4xx_has_the_error_form(fuzz_target):
    ws, secret = fuzz_target
    checked = []

    for operation in operations():

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            # Aim at the workspace we built; fuzzed account/workspace slugs would only ever be 404.
            if "account" in (case.path_parameters or {}):
                case.path_parameters["account"] = ws.account.slug
                case.path_parameters["workspace"] = ws.slug
            response = case.call(headers={"Authorization": f"Bearer {secret}"})
            where = f"{case.method} {case.formatted_path} {case.query} {case.body!r}"
            assert response.status_code < 500, f"{where}: {response.text[:500]}"
            if 400 <= response.status_code < 500:
                body = response.json()
                assert set(body["error"]) == {"code", "message", "fields"}, f"{where}: {body}"
            checked.append(response.status_code)

        call()
    print(sorted(__import__("collections").Counter(checked).items()))
    assert len(checked) >= 40  # every operation was exercised, not skipped
