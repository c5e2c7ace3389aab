"""Two copies of the proactive service at once fire each due bucket once (PostgreSQL)."""

import threading

import pytest
from django.db import connection, connections

from automations import engine, proactive as proactive_service
from automations.models import Automation, Firing, TriggerBucket

from .conftest import at, automation, event, proactive

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
N = 60


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (concurrent transactions); CI runs it there")


def side_by_side(target, copies=2):
    barrier = threading.Barrier(copies)
    results, errors = [], []

    def work():
        try:
            barrier.wait()
            results.append(target())
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_two_proactive_passes_at_once_fire_every_bucket_exactly_once(postgres_only, ws):
    Automation.objects.filter(workspace=ws).delete()
    a = automation(ws, proactive(["work-queue.polled"], ["work-queue.polled"], within=300))
    engine.on_events([event(ws, "work-queue.polled", 0, kind="work-queue", id=i) for i in range(N)], at(0))
    assert TriggerBucket.objects.filter(automation=a).count() == N
    results = side_by_side(lambda: proactive_service.run_once(at(301)))
    assert sum(r["buckets_fired"] for r in results) == N
    assert Firing.objects.filter(automation=a).count() == N
    assert sorted(Firing.objects.values_list("key", flat=True)) == sorted(f"work-queue:{i}" for i in range(N))
    assert not TriggerBucket.objects.filter(automation=a).exists()
