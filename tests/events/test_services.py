"""The events' services run through Towel like every other: a ledger row, a health verdict, and a
Redis outage recorded as a failed pass after the table was drained."""

import socket

import pytest
from django.utils import timezone

from events import buffer
from events.models import Event
from services import towel
from services.models import ServicePass
from tests import factories
from tests.events.conftest import tick

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("name", ["event-persister", "partition-manager"])
def test_the_events_services_run_through_towel_and_leave_a_ledger_row(name, events_in_table):
    ws = factories.workspace()
    buffer.push_to_table([tick(ws.pk, 1)])
    summary = towel.run(name, timezone.now())
    assert "error" not in summary and summary.get("skipped") != "another pass is running", summary
    if name == "event-persister":
        assert summary["stored"] == 1
    assert ServicePass.objects.filter(service=name, ok=True).exists()


def test_a_persister_pass_with_redis_away_stores_the_table_and_is_recorded_failed(settings):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    settings.REDIS_URL = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
    buffer.reset()
    try:
        ws = factories.workspace()
        buffer.push_to_table([tick(ws.pk, 1)])
        summary = towel.run("event-persister", timezone.now())
        assert "ConnectionError" in summary["error"]
        assert Event.objects.count() == 1
        assert ServicePass.objects.filter(service="event-persister", ok=False).exists()
    finally:
        closed.close()
        buffer.reset()
