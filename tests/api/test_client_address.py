"""Who the client is behind proxies, and the failed-key throttle that counts by it.

The README's production setup puts a reverse proxy in front: every request then comes from the
proxy's address. X-Forwarded-For names the client, but a client can send one itself, so it is
believed only through the proxies the operator trusts (ORCHESTRATOR_TRUSTED_PROXIES).
"""

import ipaddress
import time
from unittest import mock

import pytest
from django.test import RequestFactory

from orchestrator import settings as settings_module
from orchestrator.client_address import client_address
from runs.models import Role
from tests import factories

PROXY = "10.0.0.2"  # the reverse proxy: REMOTE_ADDR of every request that came through it
ATTACKER, AGENT_HOST, BYSTANDER = "203.0.113.9", "198.51.100.7", "192.0.2.44"


def networks(*cidrs):
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def trust(settings, proxies):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "TRUSTED_PROXIES": proxies}


def address_of(remote, forwarded=None):
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_address(RequestFactory().get("/", **meta))


@pytest.mark.parametrize("trusted, remote, forwarded, client", [
    # No proxy trusted (the default): the header is the client's word and never read.
    (0, ATTACKER, AGENT_HOST, ATTACKER),
    (0, PROXY, f"{ATTACKER}", PROXY),
    # One hop: the proxy appended the address it saw; what the client sent before it is ignored.
    (1, PROXY, ATTACKER, ATTACKER),
    (1, PROXY, f"{AGENT_HOST}, {ATTACKER}", ATTACKER),
    (1, PROXY, f"not-an-address, {ATTACKER}", ATTACKER),
    (1, PROXY, None, PROXY),  # no header: not through the proxy, the peer is the client
    # Two hops (CDN, then nginx): the second entry from the right.
    (2, PROXY, f"{AGENT_HOST}, {ATTACKER}, 10.0.0.3", ATTACKER),
    (2, PROXY, ATTACKER, PROXY),  # fewer entries than hops: the header did not come from the proxies
    (1, PROXY, "garbage", PROXY),
    # Networks: walk left while the address is a trusted proxy.
    (networks("10.0.0.0/8"), PROXY, f"{AGENT_HOST}, {ATTACKER}, 10.0.0.3", ATTACKER),
    (networks("10.0.0.0/8"), PROXY, "10.1.1.1, 10.0.0.3", "10.1.1.1"),  # all proxies: the leftmost
    (networks("10.0.0.0/8"), PROXY, f"garbage, 10.0.0.3", "10.0.0.3"),  # stop at what a proxy wrote
    (networks("10.0.0.0/8"), ATTACKER, AGENT_HOST, ATTACKER),  # not from a trusted proxy: header ignored
    (networks("10.0.0.0/8", "2001:db8::/32"), "2001:db8::1", ATTACKER, ATTACKER),
    (networks("10.0.0.0/8"), f"::ffff:{PROXY}", ATTACKER, ATTACKER),  # a dual-stack socket's IPv4
    (networks("10.0.0.2/32"), PROXY, f"2001:db8::7", "2001:db8::7"),
])
def test_the_client_address_believes_forwarded_for_only_through_trusted_proxies(
        settings, trusted, remote, forwarded, client):
    trust(settings, trusted)
    assert address_of(remote, forwarded) == client


@pytest.mark.parametrize("value, parsed", [
    ("", 0), ("0", 0), ("2", 2),
    ("10.0.0.0/8, 192.168.1.7", networks("10.0.0.0/8", "192.168.1.7/32")),
    ("2001:db8::/32", networks("2001:db8::/32")),
])
def test_trusted_proxies_are_a_number_of_hops_or_networks(monkeypatch, value, parsed):
    monkeypatch.setenv("ORCHESTRATOR_TRUSTED_PROXIES", value)
    assert settings_module._trusted_proxies() == parsed


@pytest.mark.parametrize("value", ["yes", "10.0.0.0/33", "-1", "10.0.0.1, proxy.example.com"])
def test_a_bad_trusted_proxies_value_stops_the_start_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("ORCHESTRATOR_TRUSTED_PROXIES", value)
    with pytest.raises(settings_module.BadEnvironment, match="ORCHESTRATOR_TRUSTED_PROXIES"):
        settings_module._trusted_proxies()


@pytest.fixture
def three_failures_a_minute(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_FAILED_AUTH_RATE": "3/minute"}


def ping(api, prefix, secret, remote, forwarded=None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return api.as_key(secret).get(f"{prefix}/ping", **extra)


def fail_until_throttled(api, prefix, remote, forwarded=None):
    statuses = [ping(api, prefix, "orch_wrong", remote, forwarded).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


def test_an_agent_behind_the_proxy_is_not_throttled_by_another_clients_bad_keys(
        api, prefix, ws, settings, three_failures_a_minute):
    trust(settings, 1)
    agent_key = factories.api_key(ws, role=Role.OPERATOR, name="agent box-1")[1]
    fail_until_throttled(api, prefix, PROXY, ATTACKER)
    assert ping(api, prefix, agent_key, PROXY, AGENT_HOST).status_code == 200
    # A bad key from another client is its own first failure, not the attacker's fourth.
    assert ping(api, prefix, "orch_typo", PROXY, BYSTANDER).status_code == 401


def test_a_valid_key_is_served_even_from_a_throttled_address(api, prefix, ws, three_failures_a_minute):
    """No proxy configured: a NAT or proxy address that others fail from must not lock out good keys."""
    fail_until_throttled(api, prefix, PROXY)
    assert ping(api, prefix, factories.api_key(ws)[1], PROXY).status_code == 200
    refused = ping(api, prefix, "orch_still_wrong", PROXY)
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 60


def test_a_spoofed_forwarded_for_neither_evades_nor_redirects_the_limit_without_trusted_proxies(
        api, prefix, three_failures_a_minute):
    statuses = [ping(api, prefix, "orch_wrong", ATTACKER, f"192.0.2.{i}").status_code for i in range(4)]
    assert statuses == [401, 401, 401, 429]  # a new made-up address each time changes nothing
    fail_until_throttled(api, prefix, PROXY, AGENT_HOST)  # blaming the agent's address ...
    assert ping(api, prefix, "orch_typo", AGENT_HOST).status_code == 401  # ... throttles only the sender


def test_a_spoofed_forwarded_for_neither_evades_nor_redirects_the_limit_through_a_trusted_proxy(
        api, prefix, settings, three_failures_a_minute):
    trust(settings, 1)
    # The proxy appends the attacker's real address after whatever the attacker wrote.
    statuses = [ping(api, prefix, "orch_wrong", PROXY, f"192.0.2.{i}, {ATTACKER}").status_code for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert ping(api, prefix, "orch_typo", PROXY, f"{ATTACKER}, {AGENT_HOST}").status_code == 401


def test_trusted_proxy_networks_find_the_client_past_several_hops(api, prefix, settings, three_failures_a_minute):
    trust(settings, networks("10.0.0.0/8"))
    fail_until_throttled(api, prefix, PROXY, f"192.0.2.1, {ATTACKER}, 10.0.0.3")
    assert ping(api, prefix, "orch_typo", PROXY, f"{AGENT_HOST}, 10.0.0.3").status_code == 401
    # A request that did not come from a trusted proxy cannot claim another address.
    assert ping(api, prefix, "orch_typo", ATTACKER, AGENT_HOST).status_code == 429


def test_anonymous_expensive_calls_count_by_the_client_address_not_a_spoofed_header(api, settings, ws):
    """DRF's own get_ident believes any X-Forwarded-For; the expensive throttle must not."""
    from rest_framework.test import APIRequestFactory

    from runs.api.throttles import ExpensiveEndpointThrottle

    request = APIRequestFactory().get("/", REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=AGENT_HOST)
    request.user, request.auth = None, None
    assert ExpensiveEndpointThrottle().get_cache_key(request, None) == f"throttle_expensive_{ATTACKER}"


def test_on_the_file_cache_a_failure_window_lasts_its_rate_period_not_the_caches_default(
        api, prefix, settings, tmp_path):
    """The embedded mode's file cache rewrites a counter with its own 300 s timeout on every incr."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                                   "LOCATION": str(tmp_path / "cache")}}
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_FAILED_AUTH_RATE": "3/hour"}
    fail_until_throttled(api, prefix, ATTACKER)
    started = time.time()
    for later, status in ((301, 429), (1800, 429), (3601, 401)):
        with mock.patch("time.time", return_value=started + later):
            refused = ping(api, prefix, "orch_wrong", ATTACKER)
        assert refused.status_code == status, later
        if status == 429:
            assert int(refused["Retry-After"]) <= 3600 - later + 1
