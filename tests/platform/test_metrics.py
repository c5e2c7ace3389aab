"""GET /metrics: Prometheus scrapes figures that match the data, in a fixed number of queries."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from runs.models import State
from services import towel
from tests import factories


def scrape(client, **headers):
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def flow(ws):
    return factories.flow(ws, name="etl")


@pytest.fixture
def busy(ws, flow):
    now = timezone.now()
    queue = factories.work_queue(ws, name="gpu")
    for _ in range(3):
        factories.flow_run(flow, state=State.SCHEDULED, scheduled_start=now - timedelta(minutes=1), work_queue=queue)
    factories.flow_run(flow, state=State.SCHEDULED, scheduled_start=now + timedelta(hours=1), work_queue=queue)
    factories.flow_run(flow, state=State.RUNNING, last_heartbeat=now - timedelta(seconds=90))
    factories.flow_run(flow, state=State.RUNNING, last_heartbeat=now - timedelta(seconds=10))
    factories.flow_run(flow, state=State.FAILED)
    return f"{ws.account.slug}/{ws.slug}"


def test_the_figures_match_the_data(client, busy, flush_events):
    towel.run("mark-late-runs")
    samples = scrape(client)
    waiting = value(samples, "orchestrator_events_buffered", buffer="table")
    flush_events()
    assert scrape(client)[("orchestrator_events_buffered", (("buffer", "table"),))] == 0
    assert waiting == (3 if not settings.REDIS_URL else 0)  # mark-late-runs' events, before the persister
    assert value(samples, "orchestrator_flow_runs", workspace=busy, state="RUNNING") == 2
    assert value(samples, "orchestrator_flow_runs", workspace=busy, state="FAILED") == 1
    scheduled = value(samples, "orchestrator_flow_runs", workspace=busy, state="SCHEDULED") or 0
    late = value(samples, "orchestrator_flow_runs", workspace=busy, state="LATE") or 0
    assert scheduled + late == 4
    assert value(samples, "orchestrator_queue_depth", workspace=busy, queue="gpu") == 3  # the future one is not due
    assert 89 <= value(samples, "orchestrator_heartbeat_lag_seconds", workspace=busy) < 120
    assert value(samples, "orchestrator_service_healthy", service="mark-late-runs") == 1
    assert value(samples, "orchestrator_service_last_pass_seconds", service="mark-late-runs") >= 0
    assert value(samples, "orchestrator_service_failed_passes_last_hour", service="mark-late-runs") == 0


def test_a_scrape_costs_the_same_queries_with_ten_times_the_rows(client, ws, flow, django_assert_max_num_queries):
    for _ in range(5):
        factories.flow_run(flow, state=State.RUNNING, last_heartbeat=timezone.now())
    with django_assert_max_num_queries(20) as few:
        scrape(client)
    for other in range(10):
        busy_flow = factories.flow(factories.workspace(), name=f"flow-{other}")
        for _ in range(5):
            factories.flow_run(busy_flow, state=State.RUNNING, last_heartbeat=timezone.now())
    with django_assert_max_num_queries(len(few.captured_queries)):
        scrape(client)


def test_only_this_host_may_scrape_without_a_token(client, db):
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200


def test_with_a_token_set_only_the_token_may_scrape(client, settings, db):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "METRICS_TOKEN": "s3cret-token"}
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
