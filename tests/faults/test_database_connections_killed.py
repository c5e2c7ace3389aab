"""PostgreSQL kills our connections under load (pg_terminate_backend, as a failover or an admin would).

A request whose connection dies answers 503 with Retry-After (never a 500), the next one works
on a new connection, a client that retries with its idempotency key gets exactly one run, and the
background services pass again once the storm is over.
"""

import json
import threading
import uuid

import psycopg
import pytest
from django.utils import timezone

from runs.models import FlowRun, Role
from services.models import ServicePass
from tests import factories
from tests.conftest import api_prefix
from tests.faults.conftest import Load, database_url, request, settle, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

STORM_SECONDS = 12


def our_backend_pid():
    """The test thread's own connection (Django's connections are per thread)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def kill_connections(postgres, ours, stop, killed):
    """Every 0.3 s, terminate every backend of the test database but the killer's and the test's own."""
    with psycopg.connect(database_url(postgres), autocommit=True) as conn:
        while not stop.wait(0.3):
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid NOT IN (pg_backend_pid(), %s)", [postgres["NAME"], ours]).fetchall()
            killed.append(len(rows))


def test_killed_connections_cost_a_retry_never_a_500_or_a_lost_run(private_redis, web_server, celery_services,
                                                                   postgres, periodic_tasks):
    ws = factories.workspace()
    factories.flow(ws, name="etl")
    key = factories.api_key(ws, role=Role.OPERATOR)[1]
    celery_services(private_redis.url)
    server = web_server(private_redis.url)
    base = server.url + api_prefix(ws)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    created, gave_up, lock = {}, [], threading.Lock()

    def create_with_retries():
        """A careful client: the same idempotency key again after a 503 or no answer."""
        idem = uuid.uuid4().hex
        for _ in range(20):
            status, body = request("POST", f"{base}/flow_runs/", headers=headers,
                                   body=json.dumps({"flow": "etl", "idempotency_key": idem}))
            if status in (200, 201):
                with lock:
                    created[idem] = json.loads(body)["id"]
                return status, body
            if status is not None and status != 503:
                return status, body
        gave_up.append(idem)
        return status, body

    def read():
        return request("GET", f"{base}/flow_runs/?page_size=10", headers=headers)

    stop, killed = threading.Event(), []
    with Load(create_with_retries, threads=3) as creates, Load(read, threads=2) as reads:
        settle(2)
        storm = threading.Thread(target=kill_connections, args=(postgres, our_backend_pid(), stop, killed))
        storm.start()
        settle(STORM_SECONDS)
        stop.set()
        storm.join()
        calm = timezone.now()
        settle(3)

    assert sum(killed) > 10, f"the storm killed only {sum(killed)} connections"
    for load in (creates, reads):
        assert not load.server_errors(), (load.statuses, load.samples)
    assert not gave_up, f"{len(gave_up)} creates never succeeded"
    stored = dict(FlowRun.objects.filter(idempotency_key__in=created).values_list("idempotency_key", "id"))
    assert {k: str(v) for k, v in stored.items()} == created
    wait_for(lambda: ServicePass.objects.filter(service="mark-late-runs", ok=True, started__gt=calm).exists(),
             timeout=60, what="a service pass to succeed after the storm")
    late_failures = ServicePass.objects.filter(ok=False, started__gt=calm)
    assert not late_failures.exists(), list(late_failures.values_list("service", "error"))
