"""Shared fixtures. Tests run on PostgreSQL + Redis when DATABASE_URL / REDIS_URL are set."""

import os
import re
import uuid
from pathlib import Path

os.environ.setdefault("DEBUG", "true")
# Playwright's sync API runs an event loop in the test thread; Django must not refuse ORM calls there.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import pytest  # noqa: E402


def worker_redis_url(url, index):
    """`url` with its database number moved up by `index` (from 0 when the URL names none)."""
    match = re.fullmatch(r"(?P<server>rediss?://[^/?#]*)(?:/(?P<db>\d*))?(?P<query>[?#].*)?", url)
    if match is None:
        raise ValueError(f"REDIS_URL {url!r} is not redis://host:port/db: cannot give each xdist worker a database")
    return f"{match['server']}/{(int(match['db'] or 0) + index) % 16}{match['query'] or ''}"  # 16: Redis's default


def _own_redis_database_per_xdist_worker():
    """Under pytest-xdist (`make test`), worker gwN uses Redis database REDIS_URL's + N (a suite run
    with redis://…/6 and three workers uses 6, 7 and 8) and a file cache of its own without Redis.

    pytest-django already gives each worker a test database of its own; without this the workers
    would share throttle counters, webhook rate limits and Celery queues, and one worker's test
    would count the other's requests. The environment is for the processes tests start; this
    process read its settings before this file, so the settings derived from REDIS_URL are set
    here too (nothing has opened the cache or the broker yet)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not re.fullmatch(r"gw\d+", worker):
        return
    from django.conf import settings

    cache = settings.CACHES["default"]
    if settings.REDIS_URL:
        url = worker_redis_url(settings.REDIS_URL, int(worker[2:]))
        os.environ["REDIS_URL"] = settings.REDIS_URL = settings.CELERY_BROKER_URL = cache["LOCATION"] = url
    elif cache["BACKEND"].endswith("FileBasedCache"):
        cache["LOCATION"] = f"{cache['LOCATION']}-{worker}"


_own_redis_database_per_xdist_worker()

from django.core.exceptions import ValidationError  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from runs.models import Role  # noqa: E402
from tests import factories  # noqa: E402


# Events this run of the suite buffers in Redis go to a stream of its own (not a running server's:
# the fixture below deletes it). Tests send events in the committing thread: a sender thread's
# fallback writes (its own database connection) would escape the test's transaction;
# tests/events/test_sender.py tests the thread. The environment is for the processes tests start;
# this process read its settings before this file, so they are set here too.
_TEST_EVENT_SETTINGS = {"EVENTS_STREAM_KEY": f"orchestrator:test-events:{uuid.uuid4().hex}",
                        "LOG_STREAM_KEY": f"orchestrator:test-logs:{uuid.uuid4().hex}",
                        "EVENTS_SEND_IN_BACKGROUND": "false"}
for _name, _value in _TEST_EVENT_SETTINGS.items():
    if f"ORCHESTRATOR_{_name}" not in os.environ:
        os.environ[f"ORCHESTRATOR_{_name}"] = _value
        from django.conf import settings as _settings  # noqa: E402

        _settings.ORCHESTRATOR[_name] = _value if _name.endswith("STREAM_KEY") else False


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """On SQLite the test database is a file, not Django's in-memory default: one per worker (each
    has a temporary folder of its own), removed after the run.

    For an in-memory database Django's live server hands the test's one connection to all its
    request threads (LiveServerThread's connections_override): a test that cancelled runs while the
    server took their heartbeats had its atomic block and a request's interleave on it ("no such
    savepoint", "pop from empty list"), and the broken connection failed every later test of its
    worker (tests/platform/test_live_server_database.py). On a file each thread has a connection of
    its own, as each process of `make run` has, and the settings' WAL, IMMEDIATE transactions and
    busy timeout make concurrent writers wait their turn. PostgreSQL's databases are pytest-django's."""
    import shutil

    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        yield
        return
    folder = tmp_path_factory.mktemp("sqlite")
    database.setdefault("TEST", {})["NAME"] = str(folder / "test.sqlite3")
    yield
    shutil.rmtree(folder, ignore_errors=True)  # pytest-django has deleted the database; its -wal, -shm may remain


@pytest.fixture(autouse=True)
def fresh_event_buffer():
    """Each test starts with an empty event stream and no remembered Redis outage."""
    from django.conf import settings

    from events import buffer
    from runs.logs import ingest

    buffer.reset()
    ingest.reset()
    if settings.REDIS_URL:
        try:
            buffer.redis_client().delete(buffer.stream_key(), ingest.STREAM.key)
        except Exception:  # a test of a stopped Redis may have left it stopped; emitters fall back
            pass
    yield
    buffer.reset()
    ingest.reset()


@pytest.fixture
def flush_logs():
    """flush_logs() -> one log-persister pass: accepted log lines waiting in Redis are stored (without
    Redis they were stored in the request)."""
    from services import log_persister

    return log_persister.run_once


@pytest.fixture
def flush_events():
    """flush_events() -> the stored events, after the test's pending events were sent and persisted."""
    from events.testing import flush

    return flush


@pytest.fixture(autouse=True)
def no_verified_keys_remembered():
    """Each test starts with empty caches of verified API keys and known workspaces
    (runs/api/key_cache.py): a key a test made has the same hash only by chance, but ids do repeat
    on SQLite."""
    from runs.api.key_cache import forget_everything

    forget_everything()


@pytest.fixture(autouse=True)
def no_beats_behind_left():
    """After each test, the heartbeats written behind (runs/beats_behind.py) forget its runs, and
    their thread has closed its database connection: the test database can then be dropped."""
    yield
    from runs.beats_behind import beats_behind

    assert beats_behind.forget(), "the thread writing heartbeats behind did not come to rest"


@pytest.fixture(autouse=True, scope="session")
def static_files_found_once():
    """WhiteNoise finds and stats every static file when Django builds the middleware, which the test
    client does for every test: 0.1 s a test (tests run with DEBUG off, as Django's test runner sets
    it, so WhiteNoise does not autorefresh; production builds it once a process). The files do not
    change during a run: each configuration finds them once, and every later middleware gets the same."""
    from django.conf import settings
    from whitenoise.middleware import WhiteNoiseMiddleware

    find_every_file = WhiteNoiseMiddleware.add_files_from_finders
    found = {}  # (static URL prefix, apps, static dirs) -> {url: whitenoise StaticFile}

    def add_files_from_finders(self):
        key = (self.static_prefix, tuple(settings.INSTALLED_APPS), tuple(map(str, settings.STATICFILES_DIRS)))
        if key not in found:
            before = dict(self.files)
            find_every_file(self)
            found[key] = {url: file for url, file in self.files.items() if before.get(url) is not file}
        self.files.update(found[key])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WhiteNoiseMiddleware, "add_files_from_finders", add_files_from_finders)
        yield


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Django's default hasher takes about 0.35 s a password here, by design; tests create
    hundreds of users, and what they check does not depend on the hash's strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ws(db):
    return factories.workspace()


@pytest.fixture
def other_ws(db):
    return factories.workspace()


@pytest.fixture
def api():
    """An API client; `api.as_key(secret)` sets the Bearer header."""
    client = APIClient()

    def as_key(secret):
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    client.as_key = as_key
    return client


class RunReporter:
    """Posts reports about a run as its claimant does: with the run's current report token.

    The run comes from the URL (`agent/flow_runs/<id>/…`, `agent/task_runs/<id>/…`) or, for a log
    batch, from its first line; with none, a token of a run that does not exist.
    """

    RUN_IN_URL = re.compile(r"/agent/(flow_runs|task_runs)/([0-9a-f-]{36})/")

    def __init__(self, workspace_id):
        self.client = APIClient()
        self.workspace_id = workspace_id  # of the token for no run

    def token_for_request(self, url, data):
        from runs.models import FlowRun, TaskRun
        from runs.run_tokens import token_for

        match = self.RUN_IN_URL.search(url)
        run_id = None
        if match and match[1] == "flow_runs":
            run_id = match[2]
        elif match:
            run_id = TaskRun.objects.filter(pk=match[2]).values_list("flow_run_id", flat=True).first()
        elif isinstance(data, dict) and data.get("logs") and isinstance(data["logs"][0], dict):
            run_id = data["logs"][0].get("flow_run_id")
        try:
            run = FlowRun.objects.filter(pk=run_id).values_list("workspace_id", "token_generation").first()
        except (ValueError, ValidationError):
            run = None
        if run is None:
            return token_for(uuid.uuid4(), self.workspace_id, 0)
        return token_for(run_id, *run)

    def post(self, url, data=None, **kwargs):
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token_for_request(url, data)}")
        return self.client.post(url, data, **kwargs)


@pytest.fixture
def reporter(ws):
    """A client that reports about runs with their report tokens (see RunReporter)."""
    return RunReporter(ws.pk)


@pytest.fixture
def key_for(ws):
    """key_for(role) -> secret of a new API key of `ws` with that role."""

    def make(role=Role.OPERATOR, workspace=None):
        return factories.api_key(workspace or ws, role=role)[1]

    return make


def api_prefix(workspace):
    return f"/api/accounts/{workspace.account.slug}/workspaces/{workspace.slug}"


@pytest.fixture
def prefix(ws):
    return api_prefix(ws)


def pytest_report_header(config):
    from django.conf import settings

    db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    broker = "redis" if settings.REDIS_URL else "filesystem"
    return f"orchestrator: database={db} broker={broker}"


@pytest.fixture
def periodic_tasks(db):
    """The beat rows the services' data migrations create, present even after a transactional
    test elsewhere flushed the database (a flush empties tables that migrations filled)."""
    import importlib
    import pkgutil

    from django.apps import apps

    import services.migrations
    from services.migrations._periodic import periodic_task_adder

    for module in pkgutil.iter_modules(services.migrations.__path__):
        migration = importlib.import_module(f"services.migrations.{module.name}")
        if hasattr(migration, "SERVICES"):
            periodic_task_adder(migration.SERVICES)(apps, None)


# --- Browser tests: Playwright on Debian's Chromium (never `playwright install`) ---------------
CHROMIUM = "/usr/bin/chromium"


def pytest_collection_modifyitems(config, items):
    """Browser tests need Debian's Chromium; CI (ORCHESTRATOR_REQUIRE_BROWSER=1) must not skip them."""
    if Path(CHROMIUM).exists() or os.environ.get("ORCHESTRATOR_REQUIRE_BROWSER") == "1":
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def live_browser_server(live_server, settings):
    """The live server, its request threads closing their database connection after each request.

    Chromium keeps its sockets alive between requests, so a request thread (and the connection
    it opened with CONN_MAX_AGE) could outlive the tests and keep PostgreSQL from dropping the
    test database. Not restored afterwards: the browser may still poll while the test tears down,
    and only the live server's threads read the setting (the test Client never closes).

    The pages' event streams (server-sent events) write a keep-alive every half second, so a
    stream whose page closed finds out at once and ends (see `no_stream_left_open`).
    """
    from django.db import connections

    connections.settings["default"]["CONN_MAX_AGE"] = 0
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "EVENTS_STREAM_HEARTBEAT_SECONDS": 0.5,
                             "EVENTS_STREAM_MAX_SECONDS": 30}
    return live_server


@pytest.fixture(autouse=True)
def no_stream_left_open():
    """Before each test, the event streams of the browser pages of the tests before it have ended.

    The live server lives for the session: a stream still sending for a closed page would go on
    reading the database during the next test."""
    import time

    from events.stream import open_streams

    deadline = time.monotonic() + 10
    while open_streams() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"ORCHESTRATOR_REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install -y chromium")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"],
    }
