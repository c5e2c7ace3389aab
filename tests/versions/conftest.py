"""Version tests: API clients per role (a private throttle cache, as the API tests use) and
logged-in dashboard clients."""

from pathlib import Path

import pytest

from tests import factories
from tests.api.conftest import admin, operator, private_cache, viewer  # noqa: F401 - the API tests' clients


@pytest.fixture
def flow(ws):
    """A flow with three versions: v1 and v2 archived, v3 the latest."""
    f = factories.flow(ws, name="nightly-etl", entrypoint="etl.flows:nightly")
    f.register_version(entrypoint="etl.flows:nightly", version="2", parameters={"day": "yesterday"})
    f.register_version(entrypoint="etl.nightly:run", version="3", parameters={"day": 1, "full": False},
                       job_env={"TZ": "UTC"}, secrets=["DB_PASSWORD"])
    return f


def versions_of(flow):
    """{label: version} of the flow."""
    return {v.version: v for v in flow.versions.all()}


@pytest.fixture(scope="session")
def artifacts():
    """Where the browser tests put their screenshots."""
    folder = Path(__file__).resolve().parents[2] / "test-artifacts" / "versions"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
