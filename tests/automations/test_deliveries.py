"""The deliveries service against a real HTTP receiver on 127.0.0.1: signed webhooks verified by
the receiver, retries with backoff (an injected `now`), giving up, a failing or slow destination
never blocking another, and two passes at once never sending one delivery twice."""

import json
import re
import smtplib
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core import mail
from django.db import connections

from automations import deliveries
from automations.actions import run_actions
from automations.deliveries import claim_due, record_success, run_once, signature_header, verify_signature
from automations.models import Delivery, DeliveryKind, DeliveryStatus
from runs.audit import Who
from runs.models import AuditEntry
from services import registry
from tests import factories

pytestmark = pytest.mark.django_db


def webhook(ws, url, now, **kw):
    return Delivery.objects.create(workspace=ws, kind=DeliveryKind.WEBHOOK, target=url, body='{"hello": "world"}',
                                   next_attempt=now, created=now, **kw)


def reload(delivery):
    delivery.refresh_from_db()
    return delivery


def seconds_after(moment, then):
    return (moment - then).total_seconds()


# --- signatures ----------------------------------------------------------------------------------

def test_verify_signature_accepts_only_the_right_secret_body_and_time():
    body, now = b'{"a": 1}', 1_800_000_000
    header = signature_header("s3cret", now, body)
    assert verify_signature("s3cret", header, body, now=now)
    assert verify_signature("s3cret", header, body, now=now + 300)
    assert not verify_signature("s3cret", header, body, now=now + 301)  # a replay, too late
    assert not verify_signature("other", header, body, now=now)
    assert not verify_signature("s3cret", header, b'{"a": 2}', now=now)
    assert verify_signature("s3cret", f"{header},v1=deadbeef", body, now=now)  # one of several may match
    for garbage in ("", None, "t=abc,v1=00", "v1=00", f"t={now}", "nonsense"):
        assert not verify_signature("s3cret", garbage, body, now=now)


def test_the_readmes_receiver_code_verifies_what_the_service_signs():
    """The snippet in the README (Receiving webhooks) is what a receiver copies: it must agree."""
    section = (Path(__file__).resolve().parents[2] / "README.md").read_text().split("### Receiving webhooks", 1)[1]
    namespace = {}
    exec(re.search(r"```python\n(.*?)```", section, re.S).group(1), namespace)  # noqa: S102 - our README
    body, now = b'{"a": 1}', int(time.time())
    header = signature_header("s3cret", now, body)
    assert namespace["verify_signature"]("s3cret", header, body)
    assert not namespace["verify_signature"]("s3cret", header, body + b" ")
    assert not namespace["verify_signature"]("s3cret", signature_header("s3cret", now - 301, body), body)


def test_the_service_is_registered_with_its_interval():
    service = registry.get("deliveries")
    assert service.interval_seconds == 5 and service.interval_variable == "ORCHESTRATOR_DELIVERIES_LOOP_SECONDS"


# --- a real receiver -----------------------------------------------------------------------------

def test_a_signed_webhook_is_verified_by_the_receiver(ws, receiver, make_automation, make_firing, now):
    factories.secret(ws, name="HOOK_SECRET", value=receiver.secret)
    automation = make_automation([{"type": "call-webhook", "url": receiver.url("/ok"), "secret_name": "HOOK_SECRET"}],
                                 name="tell ops")
    run_actions(automation, make_firing(automation), {"events": [], "reason": "crashed"}, now)
    summary = run_once(now)
    assert summary["delivered"] == 1
    [request] = receiver.received("/ok")
    assert request["verified"] is True
    delivery = reload(Delivery.objects.get())
    assert request["headers"]["X-Orchestrator-Delivery"] == str(delivery.pk)
    assert request["headers"]["Content-Type"] == "application/json"
    assert int(request["headers"]["X-Orchestrator-Timestamp"]) == pytest.approx(time.time(), abs=30)
    assert json.loads(request["body"])["automation"]["name"] == "tell ops"
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.DELIVERED, 1, 200)
    assert delivery.delivered is not None


def test_a_signature_with_the_wrong_secret_does_not_verify(ws, receiver, now):
    factories.secret(ws, name="HOOK_SECRET", value="not-what-the-receiver-holds")
    webhook(ws, receiver.url("/ok"), now, secret_name="HOOK_SECRET")
    run_once(now)
    [request] = receiver.received("/ok")
    assert request["headers"]["X-Orchestrator-Signature"].startswith("t=")
    assert request["verified"] is False


def test_a_missing_signing_secret_fails_the_delivery_without_sending(ws, receiver, now):
    delivery = webhook(ws, receiver.url("/ok"), now, secret_name="GONE")
    run_once(now)
    delivery = reload(delivery)
    assert receiver.received() == []
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
    assert "GONE is missing" in delivery.last_error


def test_a_failing_destination_is_retried_with_backoff_and_given_up(ws, receiver, closed_port_url, quick_timeouts,
                                                                   settings, now):
    delivery = webhook(ws, receiver.url("/fail"), now)
    run_once(now)  # HTTP 500
    delivery = reload(delivery)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.PENDING, 1, 500)
    assert delivery.last_error == "HTTP 500: upstream broke"
    assert 10 <= seconds_after(delivery.next_attempt, now) <= 12 + 1  # 10 s + ≤10 % jitter + the pass's time

    assert run_once(now + timedelta(seconds=5))["claimed"] == 0  # not due yet
    assert len(receiver.received("/fail")) == 1

    Delivery.objects.filter(pk=delivery.pk).update(target=closed_port_url)
    second = delivery.next_attempt
    run_once(second)  # connection refused
    delivery = reload(delivery)
    assert (delivery.attempts, delivery.last_status_code) == (2, None)
    assert delivery.last_error.startswith("connection failed") and "refused" in delivery.last_error.lower()
    assert closed_port_url.split("/hook")[0] not in delivery.last_error  # the URL is not repeated
    assert 20 <= seconds_after(delivery.next_attempt, second) <= 22 + 1

    Delivery.objects.filter(pk=delivery.pk).update(target=receiver.url("/slow"))
    third = delivery.next_attempt
    started = time.monotonic()
    run_once(third)  # answers after 2 s; the read timeout is 0.5 s
    assert time.monotonic() - started < 1.8
    delivery = reload(delivery)
    assert (delivery.attempts, delivery.last_error) == (3, "no answer within 0.5 s")
    assert 40 <= seconds_after(delivery.next_attempt, third) <= 44 + 1

    # The last allowed attempt gives up.
    Delivery.objects.filter(pk=delivery.pk).update(target=receiver.url("/fail"), attempts=7)
    run_once(delivery.next_attempt)
    delivery = reload(delivery)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 8)
    assert run_once(delivery.next_attempt + timedelta(days=1))["claimed"] == 0


def test_backoff_doubles_up_to_an_hour():
    for attempts, base in [(1, 10), (2, 20), (3, 40), (4, 80), (9, 2560), (10, 3600), (40, 3600)]:
        assert base <= deliveries.backoff_seconds(attempts) <= base * 1.1


def test_redirects_are_not_followed(ws, receiver, now):
    delivery = webhook(ws, receiver.url("/redirect"), now)
    run_once(now)
    delivery = reload(delivery)
    assert delivery.last_status_code == 302 and "redirect" in delivery.last_error
    assert receiver.received("/ok") == []


def test_a_failing_or_slow_destination_never_blocks_another_in_the_same_pass(ws, receiver, closed_port_url,
                                                                            quick_timeouts, now):
    slow = webhook(ws, receiver.url("/slow"), now - timedelta(seconds=3))
    failing = webhook(ws, receiver.url("/fail"), now - timedelta(seconds=2))
    refused = webhook(ws, closed_port_url, now - timedelta(seconds=1))
    good = webhook(ws, receiver.url("/ok"), now)  # claimed last: after every bad one
    started = time.monotonic()
    summary = run_once(now)
    assert time.monotonic() - started < 3  # each bad one cost at most its timeout
    assert summary["claimed"] == 4 and summary["delivered"] == 1 and summary["failed"] == 3
    assert reload(good).status == DeliveryStatus.DELIVERED
    assert [reload(d).attempts for d in (slow, failing, refused)] == [1, 1, 1]
    assert all(reload(d).status == DeliveryStatus.PENDING for d in (slow, failing, refused))


def test_a_pass_past_its_time_gives_the_rest_back(ws, receiver, quick_timeouts, settings, now):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERIES_PASS_SECONDS": 0.2}
    slow = [webhook(ws, receiver.url("/slow"), now) for _ in range(3)]
    summary = run_once(now)
    assert summary["claimed"] == 3 and summary["given_back"] == 2
    assert [reload(d).attempts for d in slow] == [1, 0, 0]
    assert all(reload(d).next_attempt == now for d in slow[1:])  # due again for the next pass


def test_a_claimed_delivery_is_skipped_by_another_pass_and_a_void_lease_records_nothing(ws, now):
    delivery = webhook(ws, "https://example.invalid/hook", now)
    claimed, lease = claim_due(now, 10)
    assert [d.pk for d in claimed] == [delivery.pk]
    assert claim_due(now, 10)[0] == []  # leased: another copy skips it
    # An operator retries it meanwhile: the lease is void, the first pass's outcome is not written.
    deliveries.retry(Delivery.objects.filter(pk=delivery.pk), who=Who("ada", None, "api"), now=now)
    assert record_success(claimed[0], lease, now) is False
    assert reload(delivery).status == DeliveryStatus.PENDING
    # The lease runs out (its pass died): another pass takes it.
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt=lease)
    assert claim_due(lease, 10)[0][0].pk == delivery.pk


def test_claiming_is_bounded_and_takes_a_constant_number_of_queries(ws, now, settings, django_assert_max_num_queries):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERIES_BATCH_SIZE": 5}
    Delivery.objects.bulk_create([Delivery(workspace=ws, kind=DeliveryKind.WEBHOOK, target="https://x.invalid/",
                                           next_attempt=now) for _ in range(30)])
    with django_assert_max_num_queries(5):
        claimed, _ = claim_due(now, 5)
    assert len(claimed) == 5


def test_email_is_sent_with_django_mail(ws, make_automation, make_firing, now):
    factories.member(ws, role="admin", email="boss@example.com")
    automation = make_automation([{"type": "send-email", "to": ["admins", "oncall@example.com"]}], name="runs failing")
    run_actions(automation, make_firing(automation), {"events": [], "reason": "2 runs failed"}, now)
    assert run_once(now)["delivered"] == 1
    [message] = mail.outbox
    assert message.subject == "[Orchestrator] runs failing"
    assert message.to == ["boss@example.com", "oncall@example.com"]
    assert "Why: 2 runs failed" in message.body
    assert reload(Delivery.objects.get()).status == DeliveryStatus.DELIVERED


def test_a_mail_server_error_is_retried(ws, monkeypatch, now):
    def refuse(*args, **kwargs):
        raise smtplib.SMTPServerDisconnected("gone")

    monkeypatch.setattr(deliveries, "send_mail", refuse)
    delivery = Delivery.objects.create(workspace=ws, kind=DeliveryKind.EMAIL, target="a@example.com", subject="s",
                                       body="b", next_attempt=now)
    run_once(now)
    delivery = reload(delivery)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
    assert delivery.last_error == "e-mail not sent: SMTPServerDisconnected: gone"


def test_slack_gets_a_json_text_message_unsigned(ws, receiver, make_automation, make_firing, now):
    automation = make_automation([{"type": "post-slack", "url": receiver.url("/ok"), "body": "{{ reason }} :fire:"}])
    run_actions(automation, make_firing(automation), {"events": [], "reason": "queue gpu unhealthy"}, now)
    run_once(now)
    [request] = receiver.received("/ok")
    assert json.loads(request["body"]) == {"text": "queue gpu unhealthy :fire:"}
    assert request["headers"]["Content-Type"] == "application/json"
    assert "X-Orchestrator-Signature" not in request["headers"]


def test_retry_makes_a_failed_delivery_due_with_an_audit_entry(ws, now):
    failed = webhook(ws, "https://example.invalid/", now, status=DeliveryStatus.FAILED, attempts=8)
    delivered = webhook(ws, "https://example.invalid/", now, status=DeliveryStatus.DELIVERED, attempts=1)
    later = now + timedelta(hours=1)
    count = deliveries.retry(Delivery.objects.all(), who=Who("ada", None, "api"), now=later)
    assert count == 1
    assert (reload(failed).status, reload(failed).next_attempt) == (DeliveryStatus.PENDING, later)
    assert reload(delivered).status == DeliveryStatus.DELIVERED
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.target_type, entry.before["status"]) == ("delivery.retry", "delivery", "failed")


# --- two passes at once (PostgreSQL: row locks, SKIP LOCKED) -------------------------------------

@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_passes_at_once_never_send_one_delivery_twice(postgres_only, ws, receiver, now):
    rows = [webhook(ws, receiver.url("/ok"), now) for _ in range(30)]
    barrier, results, errors = threading.Barrier(2), [], []

    def one_pass():
        try:
            barrier.wait()
            results.append(run_once(now))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    sent = [r["headers"]["X-Orchestrator-Delivery"] for r in receiver.received("/ok")]
    assert sorted(sent) == sorted(str(d.pk) for d in rows)  # each once, none twice
    assert sum(r["delivered"] for r in results) == 30
    assert Delivery.objects.filter(status=DeliveryStatus.DELIVERED, attempts=1).count() == 30


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "10.1.2.3", "[::1]", "192.168.0.7"])
def test_a_private_destination_is_refused_unless_allowed(settings, receiver, make_automation, now, host):
    """An automation must not make the server probe its own network (SSRF): a webhook to a
    loopback, private or link-local address fails without being sent, naming why and the setting."""
    from automations.models import Delivery, DeliveryKind

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERIES_ALLOW_PRIVATE_ADDRESSES": False}
    port = receiver.server.server_address[1]
    automation = make_automation([])
    delivery = Delivery.objects.create(workspace=automation.workspace, kind=DeliveryKind.WEBHOOK,
                                       target=f"http://{host}:{port}/ok", body="{}", next_attempt=now)
    deliveries.run_once(now)
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.attempts == 1
    assert "refused" in delivery.last_error and "DELIVERIES_ALLOW_PRIVATE_ADDRESSES" in delivery.last_error
    assert receiver.received() == []
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERIES_ALLOW_PRIVATE_ADDRESSES": True}
    if host == "127.0.0.1":
        delivery.next_attempt = now
        delivery.save()
        deliveries.run_once(now)
        delivery.refresh_from_db()
        assert delivery.status == "delivered" and len(receiver.received("/ok")) == 1
