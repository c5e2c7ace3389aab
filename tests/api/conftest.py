"""API tests: each test counts throttles in its own throw-away cache."""

import uuid

import pytest


@pytest.fixture(autouse=True)
def private_cache(settings):
    # Never clear the shared Redis db (other suites' data lives there): use a fresh local cache.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"api-tests-{uuid.uuid4()}"}}
