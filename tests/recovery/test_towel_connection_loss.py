"""Towel survives a database connection that dies mid-pass (PostgreSQL: pg_terminate_backend).

The failed pass is recorded as failed on a fresh connection, the service's lock does not outlive
the dead session, and the next pass runs as usual.
"""

import dataclasses

import psycopg
import pytest
from django.db import connection, transaction

from events.models import Event
from runs.models import FlowRun
from services import registry, towel
from services.models import ServicePass

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _second_connection():
    s = connection.settings_dict
    return psycopg.connect(dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None, host=s["HOST"] or None,
                           port=s["PORT"] or None, autocommit=True)


def _terminate_own_session():
    """Kill this thread's database session from another one, as a server restart or an admin would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with _second_connection() as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]


def _lock_is_free(name):
    with _second_connection() as other:
        key = towel._advisory_key(name)
        taken = other.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]
        if taken:
            other.execute("SELECT pg_advisory_unlock(%s)", [key])
        return taken


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "inside-a-transaction"])
def test_a_pass_whose_connection_dies_is_recorded_and_the_next_pass_succeeds(
        postgres_only, monkeypatch, ws, now, in_transaction, flush_events):
    lazarus = registry.get("lazarus")

    def dies_mid_pass(now):
        _terminate_own_session()
        if in_transaction:  # as a service's transition does: the session dies inside its transaction
            with transaction.atomic():
                FlowRun.objects.select_for_update().count()
        else:
            FlowRun.objects.count()
        return {"rescheduled": 0}

    monkeypatch.setitem(registry._SERVICES, "lazarus", dataclasses.replace(lazarus, run_once=dies_mid_pass))
    result = towel.run("lazarus", now)
    assert set(result) == {"error"} and "OperationalError" in result["error"]
    failed = ServicePass.objects.get()
    assert (failed.service, failed.ok) == ("lazarus", False) and "terminat" in failed.error.lower()
    flush_events()
    assert Event.objects.filter(workspace=ws, name="service.failed").count() == 1
    assert _lock_is_free("lazarus")

    monkeypatch.setitem(registry._SERVICES, "lazarus", lazarus)
    assert towel.run("lazarus", now) == {"rescheduled": 0, "failed": 0}
    assert list(ServicePass.objects.order_by("id").values_list("ok", flat=True)) == [False, True]
    assert _lock_is_free("lazarus")
