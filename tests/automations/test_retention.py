"""Firings and finished deliveries go with their workspace's event retention, in bounded batches
(the automations-proactive service); pending deliveries stay however old."""

from datetime import timedelta

from automations import proactive
from automations.models import Delivery, DeliveryStatus, Firing
from tests import factories

from .conftest import T0, automation, reactive

DAY = timedelta(days=1)


def firing(auto, fired):
    return Firing.objects.create(automation=auto, workspace_id=auto.workspace_id, fired=fired)


def delivery(ws, created, status, fired_by=None):
    return Delivery.objects.create(workspace=ws, firing=fired_by, kind="webhook", target="https://example.com/h",
                                   status=status, created=created, next_attempt=created)


def test_firings_and_finished_deliveries_past_retention_go_pending_ones_stay(bare_ws, settings):
    other = factories.workspace()
    bare_ws.event_retention_days = 7
    bare_ws.save(update_fields=["event_retention_days"])
    other.event_retention_days = 30
    other.save(update_fields=["event_retention_days"])
    mine, theirs = automation(bare_ws, reactive(["x"])), automation(other, reactive(["x"]))
    old, recent = firing(mine, T0 - 8 * DAY), firing(mine, T0 - 6 * DAY)
    kept_by_longer_retention = firing(theirs, T0 - 8 * DAY)
    delivered = delivery(bare_ws, T0 - 8 * DAY, DeliveryStatus.DELIVERED, fired_by=old)
    failed = delivery(bare_ws, T0 - 8 * DAY, DeliveryStatus.FAILED)
    pending = delivery(bare_ws, T0 - 8 * DAY, DeliveryStatus.PENDING, fired_by=old)
    fresh = delivery(bare_ws, T0 - 6 * DAY, DeliveryStatus.DELIVERED)

    summary = proactive.run_once(T0)

    assert summary["expired_firings_deleted"] == 1 and summary["expired_deliveries_deleted"] == 2
    assert set(Firing.objects.values_list("pk", flat=True)) == {recent.pk, kept_by_longer_retention.pk}
    assert set(Delivery.objects.values_list("pk", flat=True)) == {pending.pk, fresh.pk}
    pending.refresh_from_db()
    assert pending.firing_id is None  # its firing went; the delivery is still sent
    assert not Delivery.objects.filter(pk__in=[delivered.pk, failed.pk]).exists()
    again = proactive.run_once(T0)  # idempotent
    assert again["expired_firings_deleted"] == 0 and again["expired_deliveries_deleted"] == 0


def test_a_pass_deletes_at_most_its_budget_in_a_bounded_number_of_queries(bare_ws, settings,
                                                                         django_assert_max_num_queries):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENT_RETENTION_BATCH_SIZE": 10,
                             "EVENT_RETENTION_MAX_BATCHES": 3}
    auto = automation(bare_ws, reactive(["x"]))
    Firing.objects.bulk_create([Firing(automation=auto, workspace=bare_ws, fired=T0 - 40 * DAY) for _ in range(100)])
    with django_assert_max_num_queries(40):
        assert proactive.run_once(T0)["expired_firings_deleted"] == 30
    assert Firing.objects.count() == 70
