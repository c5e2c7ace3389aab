"""Failed sign-ins are limited per client address and per username, on the dashboard and the admin."""

import uuid
from unittest import mock

import pytest
import redis

from runs.api import throttles
from tests import factories

from .conftest import PASSWORD

PROXY, ATTACKER, COLLEAGUE = "10.0.0.2", "203.0.113.9", "198.51.100.7"


@pytest.fixture(autouse=True)
def private_cache(settings):
    """Counters in a throw-away cache: never the shared Redis db or file cache, where they would outlive the test."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"login-tests-{uuid.uuid4()}"}}
    throttles.counter_cache.reset()
    yield
    throttles.counter_cache.reset()


def limits(settings, address="", username=""):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "THROTTLE_FAILED_LOGIN_RATE": address,
                             "THROTTLE_FAILED_LOGIN_USER_RATE": username}


def sign_in(client, username, password, remote="127.0.0.1", url="/dashboard/login/", **extra):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=remote, **extra)


def signed_in(client):
    return "_auth_user_id" in client.session


@pytest.mark.django_db
def test_failed_sign_ins_from_one_address_stop_password_checks_from_it_with_a_clear_message(client, settings):
    limits(settings, address="3/hour")
    person = factories.user()
    assert [sign_in(client, f"guess{i}", "wrong").status_code for i in range(3)] == [200, 200, 200]
    refused = sign_in(client, person.username, PASSWORD)  # even the right password is not checked now
    assert refused.status_code == 429 and not signed_in(client)
    assert "Too many failed sign-ins from your address" in refused.content.decode()
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert sign_in(client, person.username, PASSWORD, remote=COLLEAGUE).status_code == 302  # another address


@pytest.mark.django_db
def test_failed_sign_ins_at_one_username_stop_its_password_checks_from_any_address(client, settings):
    limits(settings, username="3/hour")
    person, other = factories.user(), factories.user()
    for i in range(3):
        assert sign_in(client, person.username, "wrong", remote=f"192.0.2.{i}").status_code == 200
    refused = sign_in(client, person.username, PASSWORD, remote="192.0.2.99")
    assert refused.status_code == 429 and not signed_in(client)
    assert "Too many failed sign-ins for this username" in refused.content.decode()
    assert sign_in(client, other.username, PASSWORD, remote="192.0.2.99").status_code == 302


@pytest.mark.django_db
def test_the_right_password_clears_its_usernames_failures(client, settings):
    limits(settings, username="3/hour")
    person = factories.user()
    for _ in range(2):
        sign_in(client, person.username, "wrong")
    assert sign_in(client, person.username, PASSWORD).status_code == 302
    client.logout()
    for _ in range(2):
        sign_in(client, person.username, "wrong")
    assert sign_in(client, person.username, PASSWORD).status_code == 302  # 4 failures, never 3 in a row


@pytest.mark.django_db
def test_the_admin_login_is_limited_too(client, settings):
    limits(settings, address="2/hour")
    staff = factories.user(is_staff=True, is_superuser=True)
    for _ in range(2):
        sign_in(client, staff.username, "wrong", url="/admin/login/")
    refused = sign_in(client, staff.username, PASSWORD, url="/admin/login/")
    assert "Too many failed sign-ins from your address" in refused.content.decode() and not signed_in(client)


@pytest.mark.django_db
def test_behind_a_trusted_proxy_one_clients_failures_do_not_lock_out_its_colleagues(client, settings):
    limits(settings, address="3/hour")
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "TRUSTED_PROXIES": 1}
    person = factories.user()
    for i in range(3):  # a forged first entry changes nothing: the proxy appended the real one
        sign_in(client, person.username + "x", "wrong", remote=PROXY, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, {ATTACKER}")
    assert sign_in(client, "anyone", "wrong", remote=PROXY, HTTP_X_FORWARDED_FOR=ATTACKER).status_code == 429
    assert sign_in(client, person.username, PASSWORD, remote=PROXY, HTTP_X_FORWARDED_FOR=COLLEAGUE).status_code == 302


@pytest.mark.django_db
def test_sign_in_works_unlimited_when_the_cache_is_down(client, settings):
    limits(settings, address="1/hour", username="1/hour")
    person = factories.user()
    broken = mock.Mock(**{f"{name}.side_effect": redis.ConnectionError("refused")
                          for name in ("get_many", "add", "incr", "set", "get", "touch", "delete_many")})
    with mock.patch.object(throttles, "cache", broken):
        assert [sign_in(client, person.username, "wrong").status_code for _ in range(3)] == [200] * 3
        assert sign_in(client, person.username, PASSWORD).status_code == 302
