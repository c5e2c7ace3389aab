"""Redis stops for 30 s under API load: the API keeps serving, services resume when it is back.

Redis is the Celery broker and holds the throttle counters. Neither is needed to read runs or to
create them, so an outage may cost throttling (it fails open) and background passes (they wait),
never an answer: no 5xx but the /healthz 503 that names the broker.
"""

import json
import os
import threading
import uuid

import pytest
from django.utils import timezone

from runs.models import FlowRun, Role
from services.models import ServicePass
from tests import factories
from tests.conftest import api_prefix
from tests.faults.conftest import Load, request, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

OUTAGE_SECONDS = float(os.environ.get("FAULT_REDIS_OUTAGE_SECONDS", 30))


def test_the_api_serves_through_a_redis_outage_and_services_resume(private_redis, web_server, celery_services,
                                                                   periodic_tasks):
    ws = factories.workspace()
    factories.flow(ws, name="etl")
    key = factories.api_key(ws, role=Role.OPERATOR)[1]
    # Beat and a worker on the same Redis: the late-runs service every second shows passes stop and resume.
    celery_services(private_redis.url)
    server = web_server(private_redis.url)
    base = server.url + api_prefix(ws)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    created, lock = {}, threading.Lock()

    def create_or_read():
        if uuid.uuid4().int % 2:
            return request("GET", f"{base}/flow_runs/?flow=etl&page_size=20", headers=headers)
        idem = uuid.uuid4().hex
        status, body = request("POST", f"{base}/flow_runs/", headers=headers,
                               body=json.dumps({"flow": "etl", "idempotency_key": idem}))
        if status in (200, 201):
            with lock:
                created[idem] = json.loads(body)["id"]
        return status, body

    with Load(create_or_read, threads=4) as load:
        wait_for(lambda: ServicePass.objects.filter(service="mark-late-runs", ok=True).exists(), timeout=60,
                 what="a first pass of mark-late-runs through beat and the worker")
        private_redis.stop()
        stopped_at = timezone.now()
        during = wait_for(lambda: _health(server)[0] == 503 and _health(server), timeout=15,
                          what="/healthz to notice the broker is down")
        status, body = during
        assert body["broker"]["ok"] is False and body["database"]["ok"] is True
        served_before = sum(load.statuses.values())
        load.stopping.wait(OUTAGE_SECONDS)
        served_during = sum(load.statuses.values()) - served_before
        private_redis.start()
        restarted_at = timezone.now()
        wait_for(lambda: _health(server)[0] == 200, timeout=30, what="/healthz to see the broker back")
        wait_for(lambda: ServicePass.objects.filter(service="mark-late-runs", ok=True,
                                                    started__gt=restarted_at).exists(),
                 timeout=60, what="mark-late-runs to pass again after Redis came back")

    assert not load.server_errors(), (load.statuses, load.samples)
    assert load.statuses[None] == 0, load.samples.get(None)
    assert served_during > OUTAGE_SECONDS, f"only {served_during} answers in {OUTAGE_SECONDS} s of outage"
    # Nothing lost, nothing doubled: every run the API acknowledged exists once, under its key.
    stored = dict(FlowRun.objects.filter(idempotency_key__in=created).values_list("idempotency_key", "id"))
    assert {k: str(v) for k, v in stored.items()} == created
    assert not ServicePass.objects.filter(ok=False, started__gte=stopped_at).exists(), list(
        ServicePass.objects.filter(ok=False).values_list("service", "error"))


def _health(server):
    status, body = server.get("/healthz")
    return status, (json.loads(body) if status else {})
