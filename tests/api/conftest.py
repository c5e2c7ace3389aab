"""API tests: each test counts throttles in its own throw-away cache; clients holding a key per role."""

import uuid

import pytest

from runs.models import Role


@pytest.fixture(autouse=True)
def private_cache(settings):
    # Never clear the shared Redis db (other suites' data lives there): use a fresh local cache.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"api-tests-{uuid.uuid4()}"}}


@pytest.fixture
def viewer(api, key_for):
    return api.as_key(key_for(Role.VIEWER))


@pytest.fixture
def operator(api, key_for):
    return api.as_key(key_for(Role.OPERATOR))


@pytest.fixture
def admin(api, key_for):
    return api.as_key(key_for(Role.ADMIN))
