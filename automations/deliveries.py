"""The deliveries service: sends the webhooks, e-mails and Slack-compatible messages automations
queued (Delivery rows), with retries and backoff, so a slow or failing destination never blocks a
firing, another action, or another destination.

A pass: claim (one short transaction: the due PENDING rows, `SELECT … FOR UPDATE SKIP LOCKED`, at
most DELIVERIES_BATCH_SIZE, each leased by moving `next_attempt` forward to the pass's lease time,
so another copy of the service skips them) → send each, outside any transaction, with the connect
and read timeouts → record each result with a conditional update that acts only while the row is
still under this pass's lease (a row an operator retried or another copy re-claimed after the lease
ran out is left to them). A pass stops starting sends after DELIVERIES_PASS_SECONDS and gives the
rest back. 2xx → DELIVERED; anything else (an HTTP error, a redirect, a timeout, a refused
connection, a missing signing secret) → tried again after a backoff; the MAX_ATTEMPTS-th failure
gives up (FAILED).

Webhooks are signed when the action names a secret: `X-Orchestrator-Signature: t=<unix>,v1=<hex>`,
the HMAC-SHA256 of "<t>.<body>" with the secret's value; `verify_signature` is what a receiver
runs (README, Automations › Receiving webhooks).
"""

import hashlib
import hmac
import logging
import random
import time
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from automations.models import Delivery, DeliveryKind, DeliveryStatus
from runs import audit
from runs.models import secret_values
from services import registry

logger = logging.getLogger(__name__)

RESPONSE_MAX_BYTES = 65_536  # read of an answer's body, at most (only its start is kept, for errors)
ERROR_MAX_CHARS = 500
SIGNATURE_HEADER = "X-Orchestrator-Signature"
USER_AGENT = "Orchestrator-Deliveries/1"


def _config(key):
    return settings.ORCHESTRATOR[key]


# --- signatures ----------------------------------------------------------------------------------

def signature(secret, timestamp, body):
    """Hex HMAC-SHA256 of "<timestamp>.<body>" keyed with `secret` (str or bytes body)."""
    body = body.encode() if isinstance(body, str) else body
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret, timestamp, body):
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_signature(secret, header, body, tolerance_seconds=300, now=None):
    """Whether `header` (X-Orchestrator-Signature) signs `body` (the raw bytes received) with
    `secret`, at a time within `tolerance_seconds` of `now` (unix seconds; default the clock), which
    refuses a replay of an old message. Any v1 entry may match (several while a secret rotates)."""
    if not header or not isinstance(header, str):
        return False
    timestamp, candidates = None, []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not timestamp.isdigit() or not candidates:
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance_seconds:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


# --- claiming and recording ----------------------------------------------------------------------

def backoff_seconds(attempts):
    """Seconds before the next try after the `attempts`-th failure: base × 2^(attempts-1), at most the
    cap, plus up to 10 % jitter (so many deliveries that failed together do not retry together)."""
    base, cap = _config("DELIVERIES_BACKOFF_BASE_SECONDS"), _config("DELIVERIES_BACKOFF_MAX_SECONDS")
    delay = min(base * 2 ** min(max(attempts - 1, 0), 30), cap)
    return delay + random.uniform(0, delay * 0.1)


def claim_due(now, limit):
    """The due PENDING deliveries (at most `limit`), leased to the caller until the returned time."""
    lease = now + timedelta(seconds=_config("DELIVERIES_LEASE_SECONDS"), microseconds=random.randrange(1, 10**6))
    with transaction.atomic():
        ids = list(Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt__lte=now)
                   .order_by("next_attempt", "id").select_for_update(skip_locked=True)
                   .values_list("id", flat=True)[:limit])
        if ids:
            # Conditional too: on SQLite (no row locks) a row another copy leased meanwhile is skipped.
            Delivery.objects.filter(pk__in=ids, status=DeliveryStatus.PENDING, next_attempt__lte=now).update(
                next_attempt=lease)
    claimed = list(Delivery.objects.filter(pk__in=ids, next_attempt=lease).order_by("next_attempt", "id"))
    return claimed, lease


def _record(delivery, lease, **fields):
    """Write a send's outcome while the row is still under `lease`; whether it was written."""
    return Delivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING, next_attempt=lease).update(
        **fields) == 1


def record_success(delivery, lease, now, status_code=None):
    return _record(delivery, lease, status=DeliveryStatus.DELIVERED, attempts=delivery.attempts + 1, delivered=now,
                   next_attempt=now, last_status_code=status_code, last_error="")


def record_failure(delivery, lease, now, error, status_code=None):
    attempts = delivery.attempts + 1
    gave_up = attempts >= _config("DELIVERIES_MAX_ATTEMPTS")
    fields = {"attempts": attempts, "last_status_code": status_code, "last_error": error[:ERROR_MAX_CHARS]}
    if gave_up:
        fields.update(status=DeliveryStatus.FAILED, next_attempt=now)
    else:
        fields.update(next_attempt=now + timedelta(seconds=backoff_seconds(attempts)))
    written = _record(delivery, lease, **fields)
    if written:
        logger.info("Delivery %s (%s) attempt %d failed%s: %s", delivery.pk, delivery.kind, attempts,
                    " for the last time" if gave_up else "", error[:200])
    return written


def retry(deliveries, *, who, now):
    """Make the FAILED or PENDING rows of `deliveries` (a queryset) due at `now`, each with its audit
    entry; returns how many. A failed one gets one more attempt (the backoff series does not start
    again); one a pass is sending right now may be sent once more (its pass's lease is void)."""
    with transaction.atomic():
        rows = list(deliveries.filter(status__in=[DeliveryStatus.FAILED, DeliveryStatus.PENDING]).select_for_update())
        Delivery.objects.filter(pk__in=[row.pk for row in rows]).update(status=DeliveryStatus.PENDING, next_attempt=now)
        audit.record_many(who, "delivery.retry", rows, now=now,
                          before=lambda row: {"status": row.status, "attempts": row.attempts},
                          after=lambda row: {"status": DeliveryStatus.PENDING.value, "next_attempt": now.isoformat()})
    return len(rows)


# --- sending -------------------------------------------------------------------------------------

class SendFailed(Exception):
    def __init__(self, error, status_code=None):
        super().__init__(error)
        self.error, self.status_code = error, status_code


def _connection_reason(exc):
    """Why a connection failed, without the URL (it may hold a token): the innermost OS error."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and getattr(cause, "strerror", None):
            return cause.strerror
        cause = cause.__cause__ or cause.__context__ or (cause.args[0] if cause.args and
                                                          isinstance(cause.args[0], BaseException) else None)
    return type(exc).__name__


def _read_start(response, deadline):
    """At most RESPONSE_MAX_BYTES of the answer, stopping at `deadline` (a drip-feeding server)."""
    data = b""
    for chunk in response.iter_content(chunk_size=8192):
        data += chunk
        if len(data) >= RESPONSE_MAX_BYTES or time.monotonic() > deadline:
            break
    return data[:RESPONSE_MAX_BYTES]


def _content_type(body):
    import json

    try:
        json.loads(body)
    except ValueError:
        return "text/plain; charset=utf-8"
    return "application/json"


def private_destination(url):
    """Why `url` may not be posted to (an address of this host or its private network), or "".

    A workspace admin must not turn the server into a probe of the network it runs in (cloud
    metadata at 169.254.169.254, the database, localhost admin ports): unless
    DELIVERIES_ALLOW_PRIVATE_ADDRESSES is set, every address the host name resolves to must be a
    public one. A name that does not resolve is left to the send, which fails on it.
    """
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    if _config("DELIVERIES_ALLOW_PRIVATE_ADDRESSES"):
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError, UnicodeError):
        return ""
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not address.is_global:
            return (f"refused: {host} is a private, loopback or link-local address ({address}); set "
                    "ORCHESTRATOR_DELIVERIES_ALLOW_PRIVATE_ADDRESSES=true to allow such destinations")
    return ""


def _post(delivery, headers):
    # Imported here: the web tier imports this module (admin) and never posts; ~18 MiB in each process.
    import requests

    refused = private_destination(delivery.target)
    if refused:
        raise SendFailed(refused)
    connect, read = _config("DELIVERIES_CONNECT_TIMEOUT_SECONDS"), _config("DELIVERIES_READ_TIMEOUT_SECONDS")
    body = delivery.body.encode()
    try:
        response = requests.post(delivery.target, data=body, headers=headers, timeout=(connect, read),
                                 allow_redirects=False, stream=True)
    except requests.exceptions.ConnectTimeout:
        raise SendFailed(f"could not connect within {connect:g} s") from None
    except requests.exceptions.ReadTimeout:
        raise SendFailed(f"no answer within {read:g} s") from None
    except requests.exceptions.ConnectionError as exc:
        raise SendFailed(f"connection failed: {_connection_reason(exc)}") from None
    except requests.exceptions.RequestException as exc:
        raise SendFailed(f"request failed: {type(exc).__name__}") from None
    with response:
        try:
            start = _read_start(response, time.monotonic() + read)
        except requests.exceptions.RequestException:
            start = b""
    if 200 <= response.status_code < 300:
        return response.status_code
    text = start[:200].decode(errors="replace").strip()
    if 300 <= response.status_code < 400:
        text = "a redirect, which is not followed"
    raise SendFailed(f"HTTP {response.status_code}" + (f": {text}" if text else ""), response.status_code)


def send(delivery):
    """Send one delivery; returns the HTTP status (None for e-mail) or raises SendFailed."""
    if delivery.kind == DeliveryKind.EMAIL:
        recipients = [address.strip() for address in delivery.target.split(",") if address.strip()]
        try:
            send_mail(delivery.subject, delivery.body, None, recipients, fail_silently=False)
        except Exception as exc:  # noqa: BLE001 - any mail error is this delivery's failure
            raise SendFailed(f"e-mail not sent: {type(exc).__name__}: {str(exc)[:200]}") from None
        return None
    headers = {"User-Agent": USER_AGENT, "Content-Type": _content_type(delivery.body),
               "X-Orchestrator-Delivery": str(delivery.pk)}
    if delivery.kind == DeliveryKind.WEBHOOK:
        timestamp = str(int(time.time()))
        headers["X-Orchestrator-Timestamp"] = timestamp
        if delivery.secret_name:
            value = secret_values(delivery.workspace_id, [delivery.secret_name]).get(delivery.secret_name)
            if value is None:
                raise SendFailed(f"the signing secret {delivery.secret_name} is missing or cannot be decrypted")
            headers[SIGNATURE_HEADER] = signature_header(value, timestamp, delivery.body.encode())
    return _post(delivery, headers)


@registry.register("deliveries", "DELIVERIES_LOOP_SECONDS",
                   "Sends the webhooks, e-mails and Slack messages automations queued, with retries and backoff.")
def run_once(now=None):
    now = now or timezone.now()
    started = time.monotonic()
    claimed, lease = claim_due(now, _config("DELIVERIES_BATCH_SIZE"))
    summary = {"claimed": len(claimed), "delivered": 0, "failed": 0, "gave_up": 0, "given_back": 0, "lost_lease": 0}
    for index, delivery in enumerate(claimed):
        if index and time.monotonic() - started > _config("DELIVERIES_PASS_SECONDS"):
            # Out of time (every pass sends at least one): the rest are due again at once, for the next pass.
            summary["given_back"] = Delivery.objects.filter(
                pk__in=[d.pk for d in claimed[index:]], status=DeliveryStatus.PENDING, next_attempt=lease).update(
                next_attempt=now)
            break
        try:
            status_code, error = send(delivery), None
        except SendFailed as exc:
            status_code, error = exc.status_code, exc.error
        except Exception as exc:  # noqa: BLE001 - one broken row never fails the pass for the others
            logger.exception("Delivery %s could not be sent", delivery.pk)
            status_code, error = None, f"{type(exc).__name__}"
        # The outcome's time: the pass's `now` plus what the pass has taken so far.
        at = now + timedelta(seconds=time.monotonic() - started)
        if error is None:
            written = record_success(delivery, lease, at, status_code)
            summary["delivered"] += written
        else:
            written = record_failure(delivery, lease, at, error, status_code)
            if written and delivery.attempts + 1 >= _config("DELIVERIES_MAX_ATTEMPTS"):
                summary["gave_up"] += 1
            else:
                summary["failed"] += written
        summary["lost_lease"] += not written
    return summary
