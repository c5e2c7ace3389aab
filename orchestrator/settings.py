"""Django settings for Orchestrator.

Every value a deployment may want to change is read from the environment here, and only here.
The README's "Configuration" table lists each variable with its default.
"""

import ipaddress
import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


class BadEnvironment(RuntimeError):
    """A setting the environment must give, or gives wrongly. Not ImproperlyConfigured: manage.py
    swallows that while loading settings and then fails with an unrelated "Models aren't loaded yet"."""


def env_bool(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise BadEnvironment(f"{name} must be a whole number, got {value!r}") from exc


def env_limit(name):
    """A whole number ≥ 1, or None when unset or empty (no limit)."""
    value = env_int(name, None)
    if value is not None and value < 1:
        raise BadEnvironment(f"{name} must be 1 or more, or empty for no limit; got {value}")
    return value


def env_float(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise BadEnvironment(f"{name} must be a number, got {value!r}") from exc


def env_list(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# Runtime files of the embedded mode (SQLite database, broker folders, generated secret key).
VAR_DIR = Path(os.environ.get("ORCHESTRATOR_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)


def _secret_key():
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    if not DEBUG:
        raise BadEnvironment("SECRET_KEY must be set when DEBUG is off (make run and make test set DEBUG=true).")
    # Generated once and kept, so sessions survive restarts of a development server.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])


def _trusted_proxies():
    """ORCHESTRATOR_TRUSTED_PROXIES: empty (no proxy: the client is REMOTE_ADDR), a number of proxy
    hops in front of the web server, or a comma list of the proxies' networks (CIDRs or addresses)."""
    value = os.environ.get("ORCHESTRATOR_TRUSTED_PROXIES", "").strip()
    if not value:
        return 0
    if value.isdigit():
        return int(value)
    try:
        return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in value.split(",") if item.strip())
    except ValueError as exc:
        raise BadEnvironment(f"ORCHESTRATOR_TRUSTED_PROXIES must be a number of hops or a comma list of networks "
                             f"(e.g. 10.0.0.0/8,192.168.1.7), got {value!r}: {exc}") from exc


def _proxy_ssl_header():
    """ORCHESTRATOR_SECURE_PROXY_SSL_HEADER: 'X-Forwarded-Proto' (value https) or 'Header: value'."""
    value = os.environ.get("ORCHESTRATOR_SECURE_PROXY_SSL_HEADER", "").strip()
    if not value:
        return None
    name, _, expected = value.partition(":")
    name, expected = name.strip(), expected.strip() or "https"
    if not name or not all(c.isalnum() or c == "-" for c in name):
        raise BadEnvironment(f"ORCHESTRATOR_SECURE_PROXY_SSL_HEADER must be a header name such as "
                             f"X-Forwarded-Proto, optionally ': value' (default https), got {value!r}")
    return "HTTP_" + name.upper().replace("-", "_"), expected


# --- HTTPS (DEBUG off; `make run` serves plain http://127.0.0.1:8000 with DEBUG on) ----------------
# Only a header the operator names is believed to say "this came in over https": a client could
# send any header itself, so Django must not trust one unless the proxy always sets (overwrites) it.
SECURE_PROXY_SSL_HEADER = _proxy_ssl_header()
if not DEBUG:
    # Behind a TLS-terminating proxy, turn the redirect on only with ORCHESTRATOR_SECURE_PROXY_SSL_HEADER
    # (else every request looks like http and redirects forever), or off when the proxy redirects.
    SECURE_SSL_REDIRECT = env_bool("ORCHESTRATOR_SECURE_SSL_REDIRECT", True)
    # Load balancers probe /healthz on the plain port; a redirect is not an answer to them.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("ORCHESTRATOR_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("ORCHESTRATOR_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("ORCHESTRATOR_HSTS_PRELOAD", False)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Preloading asks browser vendors to hard-code the domain (its apex is submitted at
    # hstspreload.org), hard to undo: the operator's decision, ORCHESTRATOR_HSTS_PRELOAD. Without
    # it, check --deploy's advice to preload (W021) is no defect, so it is not shown.
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# Django's defaults today; written down so that a change of default cannot loosen them unnoticed.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_htmx",
    "runs",
    "services",
    "events",
    "automations",
]

MIDDLEWARE = [
    # First: a body too large or without a length is refused before anything reads it (WSGI; under
    # ASGI orchestrator/asgi.py's wrapper has answered already).
    "orchestrator.bodies.BoundedBodiesMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A flow run's heartbeat that is in order is answered here, before the rest (runs/api/hot_lane.py).
    "runs.api.hot_lane.HotLaneMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "orchestrator.lazy_messages.LazyMessageMiddleware",  # Django's, its storage made when first used
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, so that it sees the views' exceptions first: a lost database is a 503, not a 500.
    "orchestrator.health.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "orchestrator.urls"
WSGI_APPLICATION = "orchestrator.wsgi.application"
ASGI_APPLICATION = "orchestrator.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "runs.dashboard.context.header_roles",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# DATABASE_URL unset: the embedded mode, a SQLite file in WAL mode. IMMEDIATE transactions take
# the write lock up front, so web, worker and beat writing at once wait (up to `timeout` seconds)
# instead of failing half-way with "database is locked".
DATABASE_URL = os.environ.get("DATABASE_URL", "")
SQLITE_PATH = Path(os.environ.get("ORCHESTRATOR_SQLITE_PATH", VAR_DIR / "orchestrator.sqlite3"))
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60), conn_health_checks=True
        )
    }
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Django's, with a health check that polls the socket instead of a round trip per request.
        DATABASES["default"]["ENGINE"] = "orchestrator.db.postgresql"
        # The hot paths' statements (runs/hot_sql.py, whose parameters the server binds) are
        # prepared on a connection at their first run (psycopg's prepare_threshold 0): PostgreSQL
        # then skips planning them (a state change's read of its run planned for 1.3 ms to run for
        # 0.1). Django's other statements quote their parameters into the text and are never
        # prepared. Off: PgBouncer in transaction mode without max_prepared_statements.
        DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = \
            0 if env_bool("DATABASE_PREPARED_STATEMENTS", True) else None
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# Times to the second everywhere Django formats a date itself (the admin): orchestrator/formats/.
FORMAT_MODULE_PATH = ["orchestrator.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files (whitenoise; nothing is loaded from a CDN) --------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing root
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the app folders when collectstatic has not run (development, tests).
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)

LOGIN_URL = "/admin/login/"

# --- Celery ---------------------------------------------------------------------------------
# REDIS_URL unset: kombu's filesystem transport, a broker that needs no server.
REDIS_URL = os.environ.get("REDIS_URL", "")
CELERY_BROKER_FOLDER = VAR_DIR / "celery"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
else:
    CELERY_BROKER_URL = "filesystem://"
    # kombu's filesystem transport with atomic message files (orchestrator/broker.py: kombu's own
    # can hand the worker a half-written message, which stops it).
    CELERY_BROKER_TRANSPORT = "orchestrator.broker:Transport"
    for sub in ("queue", "processed", "control"):
        (CELERY_BROKER_FOLDER / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_FOLDER / "queue"),
        "data_folder_out": str(CELERY_BROKER_FOLDER / "queue"),
        "processed_folder": str(CELERY_BROKER_FOLDER / "processed"),
        "control_folder": str(CELERY_BROKER_FOLDER / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# django-celery-beat's DatabaseScheduler, applying the services' intervals from ORCHESTRATOR first.
CELERY_BEAT_SCHEDULER = "services.beat_scheduler:ServiceScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A service pass that outlives twice its interval is stuck; expire queued duplicates instead of
# piling them up behind it (Towel also skips overlapping passes).
CELERY_TASK_DEFAULT_EXPIRES = 60

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "runs.api.authentication.RunTokenAuthentication",
        "runs.api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["runs.api.permissions.WorkspaceRolePermission"],
    "DEFAULT_PAGINATION_CLASS": "runs.api.pagination.PagePagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "runs.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": ["runs.api.parsers.StrictJSONParser", "runs.api.parsers.StrictFormParser",
                               "runs.api.parsers.StrictMultiPartParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "runs.api.negotiation.ContentNegotiation",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

# The cache holds the API throttle counters, so every web process must see the same one: Redis
# when REDIS_URL is set, else a file cache under var/ that all processes of this host share.
# redis-py waits 5 s by default to connect and to read: a stopped or frozen Redis would hold every
# request that long. Counters are O(1) commands, so a small timeout is plenty when Redis is well,
# and runs/api/throttles.py skips the cache for CACHE_RETRY_SECONDS after a failure, so at most one
# request per process and interval pays it. No retries: a retry would double the wait.
CACHE_TIMEOUT_SECONDS = env_float("ORCHESTRATOR_CACHE_TIMEOUT_SECONDS", 0.25)


def redis_cache_options():
    """The Redis cache's OPTIONS. A function, so that redis-py (~6 MiB in every process, with the
    `cryptography` it loads) is imported only where Redis is in use, not by `make run`'s processes."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"socket_connect_timeout": CACHE_TIMEOUT_SECONDS, "socket_timeout": CACHE_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), 0)}


if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": "orchestrator", "OPTIONS": redis_cache_options()}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                          "LOCATION": str(VAR_DIR / "cache")}}

# The largest request body (bytes) the API reads; a larger one is a 413 before it is read. Django's
# own default, named here because the agents' log batches (AGENT_LOG_BATCH_MAX_BYTES) must fit in it.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("ORCHESTRATOR_API_MAX_BODY_BYTES", 2_621_440)

SPECTACULAR_SETTINGS = {
    "TITLE": "Orchestrator API",
    "DESCRIPTION": "Flows, schedules, runs and the agents that execute them.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One name for the run-state choice set, however many serializers use it.
    "ENUM_NAME_OVERRIDES": {"RunStateEnum": "runs.models.flow_runs.State",
                            "AgentStatusEnum": "runs.models.workers.AgentStatus",
                            "ScheduleStatusEnum": "runs.models.schedules.ScheduleStatus",
                            "KeyRoleEnum": "runs.models.workspaces.Role",
                            "PersonRoleEnum": "runs.models.workspaces.PERSON_ROLE_CHOICES",
                            # A schedule's kind keeps the name it had before deliveries had a kind too.
                            "KindEnum": "runs.models.schedules.ScheduleKind",
                            "DeliveryKindEnum": "automations.models.DeliveryKind",
                            "DeliveryStatusEnum": "automations.models.DeliveryStatus"},
    # Request bodies get their own components, without the read-only fields of the answers.
    "COMPONENT_SPLIT_REQUEST": True,
    # Tags and operation ids come from what follows the workspace: flows, schedules, agent, …
    "SCHEMA_PATH_PREFIX": r"/api/accounts/\{account\}/workspaces/\{workspace\}",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "runs.api.schema.errors_documented"],
}

# --- Orchestration defaults (DESIGN.md "The services") --------------------------------------
ORCHESTRATOR = {
    # Scheduler: how many future runs every ACTIVE schedule keeps, and how often it runs.
    "SCHEDULER_RUNS_AHEAD": env_int("ORCHESTRATOR_SCHEDULER_RUNS_AHEAD", 10),
    "SCHEDULER_LOOP_SECONDS": env_int("ORCHESTRATOR_SCHEDULER_LOOP_SECONDS", 10),
    # The most time (seconds) one computation of a schedule's fire times may take: validating it,
    # previewing it, showing it, or one schedule's share of a scheduler pass. Past it, the rule is
    # refused as too expensive to evaluate (runs/schedules/bounds.py).
    "SCHEDULE_COMPUTE_SECONDS": env_float("ORCHESTRATOR_SCHEDULE_COMPUTE_SECONDS", 1.0),
    # Default retention of runs, logs and events for new workspaces (days).
    "RUN_RETENTION_DAYS": env_int("ORCHESTRATOR_RUN_RETENTION_DAYS", 30),
    # Default monthly quota of successful (COMPLETED) task runs for new workspaces; None (empty):
    # no quota, the self-hosted default (runs/quota.py).
    "MONTHLY_TASK_RUN_QUOTA": env_limit("ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA"),
    # Retention (services/retention.py): how often a pass runs, how many runs one batch marks, hides
    # or deletes, and at most how many batches of each step one workspace gets per pass.
    "RETENTION_LOOP_SECONDS": env_int("ORCHESTRATOR_RETENTION_LOOP_SECONDS", 3600),
    "RETENTION_BATCH_SIZE": env_int("ORCHESTRATOR_RETENTION_BATCH_SIZE", 1000),
    "RETENTION_MAX_BATCHES": env_int("ORCHESTRATOR_RETENTION_MAX_BATCHES", 20),
    # Background deletion (runs/deletion.py): runs deleted per batch (with everything under them),
    # how long a worker's hold on a job lasts without progress before the deletion-jobs service
    # hands the job to another worker (seconds), and how often that service looks.
    "DELETION_BATCH_SIZE": env_int("ORCHESTRATOR_DELETION_BATCH_SIZE", 1000),
    "DELETION_LEASE_SECONDS": env_int("ORCHESTRATOR_DELETION_LEASE_SECONDS", 300),
    "DELETION_JOBS_LOOP_SECONDS": env_int("ORCHESTRATOR_DELETION_JOBS_LOOP_SECONDS", 60),
    # Fernet keys that encrypt workspaces' secrets, the encrypting one first (runs/vault.py); none:
    # one derived from SECRET_KEY (development only; production sets its own).
    "SECRETS_KEYS": env_list("ORCHESTRATOR_SECRETS_KEY", []),
    # API keys: how many characters of the secret are shown as a public prefix.
    "API_KEY_PREFIX_LENGTH": 8,
    # Seconds a verified API key is kept in each web process (runs/api/key_cache.py) instead of being
    # looked up per request: a revocation, demotion or removal made elsewhere is honoured within it.
    # 0 turns the cache off. Expiry is checked against the clock on every request regardless.
    "API_KEY_CACHE_SECONDS": env_float("ORCHESTRATOR_API_KEY_CACHE_SECONDS", 5),
    # Most verified keys each process keeps (least recently used go first).
    "API_KEY_CACHE_SIZE": env_int("ORCHESTRATOR_API_KEY_CACHE_SIZE", 10000),
    # --- Recovery services (services/; README "Recovery services"). Seconds unless named. ---
    # Heartbeat verdicts never come before this many missed beats of the run's (or agent's) interval.
    "HEARTBEAT_MISSED_BEATS": env_int("ORCHESTRATOR_HEARTBEAT_MISSED_BEATS", 3),
    # On PostgreSQL each web process writes the flow runs' heartbeats it heard, and reads their states
    # again, in one statement every this many seconds, and answers a beat from what it read
    # (runs/beats_behind.py): an answer is at most 3 intervals old, a beat reaches the database up
    # to one interval late. 0: every beat is written in its request. At most 10.
    "HEARTBEAT_WRITE_BEHIND_SECONDS": env_float("ORCHESTRATOR_HEARTBEAT_WRITE_BEHIND_SECONDS", 1.0),
    # Most rows one pass of a recovery service moves; the next beat takes the rest.
    "RECOVERY_BATCH_SIZE": env_int("ORCHESTRATOR_RECOVERY_BATCH_SIZE", 1000),
    # Zombie Killer. The 2-minute profile: ZOMBIE_KILLER_THRESHOLD_SECONDS=120 (needs heartbeats
    # every ≤ 40 s). Flow runs get a longer threshold so Lazarus may re-run them first.
    "ZOMBIE_KILLER_LOOP_SECONDS": env_int("ORCHESTRATOR_ZOMBIE_KILLER_LOOP_SECONDS", 60),
    "ZOMBIE_KILLER_THRESHOLD_SECONDS": env_int("ORCHESTRATOR_ZOMBIE_KILLER_THRESHOLD_SECONDS", 600),
    "ZOMBIE_KILLER_FLOW_RUN_THRESHOLD_SECONDS": env_int("ORCHESTRATOR_ZOMBIE_KILLER_FLOW_RUN_THRESHOLD_SECONDS", 1800),
    # Lazarus: RUNNING runs with no active task runs and no progress for the grace; SUBMITTED runs
    # that never started within the starting grace. At most LAZARUS_MAX_RESCHEDULES, then FAILED.
    "LAZARUS_LOOP_SECONDS": env_int("ORCHESTRATOR_LAZARUS_LOOP_SECONDS", 600),
    "LAZARUS_GRACE_SECONDS": env_int("ORCHESTRATOR_LAZARUS_GRACE_SECONDS", 600),
    "LAZARUS_STARTING_GRACE_SECONDS": env_int("ORCHESTRATOR_LAZARUS_STARTING_GRACE_SECONDS", 600),
    "LAZARUS_MAX_RESCHEDULES": env_int("ORCHESTRATOR_LAZARUS_MAX_RESCHEDULES", 10),
    # mark-late-runs: SCHEDULED runs past scheduled start + grace become LATE.
    "LATE_RUNS_LOOP_SECONDS": env_int("ORCHESTRATOR_LATE_RUNS_LOOP_SECONDS", 5),
    "LATE_RUNS_GRACE_SECONDS": env_int("ORCHESTRATOR_LATE_RUNS_GRACE_SECONDS", 15),
    # cancellation-cleanup: a CANCELLING run silent this long (own or agent heartbeat) → CANCELLED.
    "CANCELLATION_CLEANUP_LOOP_SECONDS": env_int("ORCHESTRATOR_CANCELLATION_CLEANUP_LOOP_SECONDS", 20),
    "CANCELLING_THRESHOLD_SECONDS": env_int("ORCHESTRATOR_CANCELLING_THRESHOLD_SECONDS", 300),
    # fail-expired-pauses and agent-monitor loops.
    "PAUSE_EXPIRER_LOOP_SECONDS": env_int("ORCHESTRATOR_PAUSE_EXPIRER_LOOP_SECONDS", 30),
    # Audit entries older than their workspace's run retention are deleted this often.
    "AUDIT_RETENTION_LOOP_SECONDS": env_int("ORCHESTRATOR_AUDIT_RETENTION_LOOP_SECONDS", 3600),
    "AGENT_MONITOR_LOOP_SECONDS": env_int("ORCHESTRATOR_AGENT_MONITOR_LOOP_SECONDS", 30),
    # GET /metrics: the Bearer token Prometheus scrapes with; unset, only this host may scrape.
    "METRICS_TOKEN": os.environ.get("ORCHESTRATOR_METRICS_TOKEN", ""),
    # Events (events/): off only to measure what they cost (bench); the stream that buffers them
    # in Redis, its cap (oldest entries are trimmed past it), and how long a Redis call may take.
    "EVENTS_ENABLED": env_bool("ORCHESTRATOR_EVENTS_ENABLED", True),
    "EVENTS_STREAM_KEY": os.environ.get("ORCHESTRATOR_EVENTS_STREAM_KEY", "orchestrator:events"),
    "EVENTS_STREAM_MAX_LENGTH": env_int("ORCHESTRATOR_EVENTS_STREAM_MAX_LENGTH", 500_000),
    "EVENTS_REDIS_TIMEOUT_SECONDS": env_float("ORCHESTRATOR_EVENTS_REDIS_TIMEOUT_SECONDS", 0.5),
    # With Redis, committed events are sent from a background thread of each process (batched, no
    # round trip in the request); false sends them in the committing thread (events/sender.py).
    "EVENTS_SEND_IN_BACKGROUND": env_bool("ORCHESTRATOR_EVENTS_SEND_IN_BACKGROUND", True),
    # The event persister: every second, at most MAX_BATCHES batches of BATCH_SIZE per source.
    "EVENT_PERSISTER_LOOP_SECONDS": env_int("ORCHESTRATOR_EVENT_PERSISTER_LOOP_SECONDS", 1),
    "EVENT_PERSISTER_BATCH_SIZE": env_int("ORCHESTRATOR_EVENT_PERSISTER_BATCH_SIZE", 1000),
    "EVENT_PERSISTER_MAX_BATCHES": env_int("ORCHESTRATOR_EVENT_PERSISTER_MAX_BATCHES", 20),
    # The partition manager: daily; partitions made this many days ahead; retention of new
    # workspaces; what one pass deletes at most for workspaces with a shorter retention.
    "PARTITION_MANAGER_LOOP_SECONDS": env_int("ORCHESTRATOR_PARTITION_MANAGER_LOOP_SECONDS", 86_400),
    "EVENT_PARTITION_DAYS_AHEAD": env_int("ORCHESTRATOR_EVENT_PARTITION_DAYS_AHEAD", 7),
    "EVENT_RETENTION_DAYS": env_int("ORCHESTRATOR_EVENT_RETENTION_DAYS", 30),
    "EVENT_RETENTION_BATCH_SIZE": env_int("ORCHESTRATOR_EVENT_RETENTION_BATCH_SIZE", 10_000),
    "EVENT_RETENTION_MAX_BATCHES": env_int("ORCHESTRATOR_EVENT_RETENTION_MAX_BATCHES", 50),
    # Automations (automations/; README "Automations"): the proactive service fires triggers whose
    # expected event did not come, every LOOP_SECONDS, at most BATCH_SIZE buckets a pass; a
    # workspace has at most MAX_PER_WORKSPACE automations (each batch of events is matched against all).
    "AUTOMATIONS_PROACTIVE_LOOP_SECONDS": env_int("ORCHESTRATOR_AUTOMATIONS_PROACTIVE_LOOP_SECONDS", 5),
    "AUTOMATIONS_PROACTIVE_BATCH_SIZE": env_int("ORCHESTRATOR_AUTOMATIONS_PROACTIVE_BATCH_SIZE", 1000),
    "AUTOMATIONS_MAX_PER_WORKSPACE": env_int("ORCHESTRATOR_AUTOMATIONS_MAX_PER_WORKSPACE", 200),
    # An automation fires at most this many times in any 60 seconds; past it its firings are
    # dropped (and logged) until the minute has passed. Stops loops between automations whose
    # actions cause each other's events (pause/resume ping-pong) and floods of firings.
    "AUTOMATIONS_MAX_FIRINGS_PER_MINUTE": env_int("ORCHESTRATOR_AUTOMATIONS_MAX_FIRINGS_PER_MINUTE", 60),
    # Deliveries (automations/deliveries.py): webhooks, e-mails and Slack-compatible messages that
    # automations queue. Every 5 s a pass claims at most BATCH_SIZE due ones and sends each with the
    # connect/read timeouts (seconds; redirects are never followed); a pass stops starting sends after
    # PASS_SECONDS and leaves the rest due. A claimed delivery is leased for LEASE_SECONDS, so another
    # copy of the service skips it (keep it above PASS_SECONDS plus one send). A failure is retried
    # after BACKOFF_BASE_SECONDS × 2^(attempt-1) (+ up to 10 % jitter, at most BACKOFF_MAX_SECONDS),
    # and the MAX_ATTEMPTS-th failure gives up (FAILED; an operator may retry it).
    "DELIVERIES_LOOP_SECONDS": env_int("ORCHESTRATOR_DELIVERIES_LOOP_SECONDS", 5),
    # Off: webhooks and Slack messages go only to public addresses (no localhost, private networks,
    # link-local cloud metadata), so an automation cannot probe the server's own network.
    "DELIVERIES_ALLOW_PRIVATE_ADDRESSES": env_bool("ORCHESTRATOR_DELIVERIES_ALLOW_PRIVATE_ADDRESSES", False),
    "DELIVERIES_BATCH_SIZE": env_int("ORCHESTRATOR_DELIVERIES_BATCH_SIZE", 50),
    "DELIVERIES_CONNECT_TIMEOUT_SECONDS": env_float("ORCHESTRATOR_DELIVERIES_CONNECT_TIMEOUT_SECONDS", 3),
    "DELIVERIES_READ_TIMEOUT_SECONDS": env_float("ORCHESTRATOR_DELIVERIES_READ_TIMEOUT_SECONDS", 5),
    "DELIVERIES_PASS_SECONDS": env_float("ORCHESTRATOR_DELIVERIES_PASS_SECONDS", 30),
    "DELIVERIES_LEASE_SECONDS": env_int("ORCHESTRATOR_DELIVERIES_LEASE_SECONDS", 120),
    "DELIVERIES_MAX_ATTEMPTS": env_int("ORCHESTRATOR_DELIVERIES_MAX_ATTEMPTS", 8),
    "DELIVERIES_BACKOFF_BASE_SECONDS": env_float("ORCHESTRATOR_DELIVERIES_BACKOFF_BASE_SECONDS", 10),
    "DELIVERIES_BACKOFF_MAX_SECONDS": env_float("ORCHESTRATOR_DELIVERIES_BACKOFF_MAX_SECONDS", 3600),
    # Events of agents' polls: a queue's `work-queue.polled` comes at most once per this many
    # seconds, and its last_polled is exact to it (runs/claiming.py record_poll).
    "EVENTS_QUEUE_POLLED_EVERY_SECONDS": env_int("ORCHESTRATOR_EVENTS_QUEUE_POLLED_EVERY_SECONDS", 60),
    # The event stream (server-sent events, events/stream.py): how often it reads new events
    # (seconds), the most it sends from one read, the comment it sends when quiet (seconds), and
    # how long one connection lasts before the client is told to reconnect (seconds), so that a
    # web worker is never held forever.
    "EVENTS_STREAM_POLL_SECONDS": env_float("ORCHESTRATOR_EVENTS_STREAM_POLL_SECONDS", 1.0),
    "EVENTS_STREAM_BATCH_SIZE": env_int("ORCHESTRATOR_EVENTS_STREAM_BATCH_SIZE", 500),
    "EVENTS_STREAM_HEARTBEAT_SECONDS": env_float("ORCHESTRATOR_EVENTS_STREAM_HEARTBEAT_SECONDS", 15.0),
    "EVENTS_STREAM_MAX_SECONDS": env_float("ORCHESTRATOR_EVENTS_STREAM_MAX_SECONDS", 300.0),
    # work-queue-monitor: each queue is healthy when not paused, polled within
    # WORK_QUEUE_HEALTH_POLL_SECONDS and without LATE runs; a change emits work-queue.(un)healthy.
    "WORK_QUEUE_MONITOR_LOOP_SECONDS": env_int("ORCHESTRATOR_WORK_QUEUE_MONITOR_LOOP_SECONDS", 30),
    "WORK_QUEUE_HEALTH_POLL_SECONDS": env_int("ORCHESTRATOR_WORK_QUEUE_HEALTH_POLL_SECONDS", 300),
    # Incoming webhooks (POST /hooks/<slug>): the largest body taken (bytes; bigger → 413), and
    # how many requests one webhook takes per window ("N/second|minute|hour|day"; empty: no limit).
    "WEBHOOK_MAX_BODY_BYTES": env_int("ORCHESTRATOR_WEBHOOK_MAX_BODY_BYTES", 262_144),
    "WEBHOOK_THROTTLE_RATE": os.environ.get("ORCHESTRATOR_WEBHOOK_THROTTLE_RATE", "600/minute"),
    # Towel: a lease (SQLite) expires after this if its holder died; ledger rows kept this long.
    "TOWEL_LEASE_SECONDS": env_int("ORCHESTRATOR_TOWEL_LEASE_SECONDS", 600),
    "TOWEL_LEDGER_RETENTION_DAYS": env_int("ORCHESTRATOR_TOWEL_LEDGER_RETENTION_DAYS", 7),
    # A service is unhealthy when it has not succeeded within this many of its intervals.
    "TOWEL_UNHEALTHY_INTERVALS": env_int("ORCHESTRATOR_TOWEL_UNHEALTHY_INTERVALS", 3),
    # …and never sooner than this many seconds: a service that loops every second (the event
    # persister) must not flap because one pass waited behind a long one in the worker.
    "TOWEL_UNHEALTHY_MIN_SECONDS": env_int("ORCHESTRATOR_TOWEL_UNHEALTHY_MIN_SECONDS", 15),
    # Agents: the largest log batch one request may carry (bytes; bigger → 413), the most lines in
    # it (more → 400, judged before any line is: tiny lines would otherwise cost a validation each),
    # and the most runs one poll may claim.
    "AGENT_LOG_BATCH_MAX_BYTES": env_int("ORCHESTRATOR_AGENT_LOG_BATCH_MAX_BYTES", 1_048_576),
    "AGENT_LOG_BATCH_MAX_LINES": env_int("ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES", 1000),
    # The longest message one log line may carry (characters; longer → that line is refused, naming
    # `message`).
    "AGENT_LOG_LINE_MAX_CHARS": env_int("ORCHESTRATOR_AGENT_LOG_LINE_MAX_CHARS", 32_768),
    # Logs apart from orchestration (runs/logs/): with Redis, accepted log batches wait in this
    # stream (one entry per batch) for the log persister; past LOG_STREAM_MAX_LENGTH entries (the
    # persister far behind) batches are written to the database in the request instead, never
    # trimmed. The persister: every LOOP_SECONDS, at most MAX_BATCHES transactions of BATCH_SIZE
    # stream entries each.
    "LOG_STREAM_KEY": os.environ.get("ORCHESTRATOR_LOG_STREAM_KEY", "orchestrator:logs"),
    "LOG_STREAM_MAX_LENGTH": env_int("ORCHESTRATOR_LOG_STREAM_MAX_LENGTH", 100_000),
    "LOG_PERSISTER_LOOP_SECONDS": env_int("ORCHESTRATOR_LOG_PERSISTER_LOOP_SECONDS", 1),
    "LOG_PERSISTER_BATCH_SIZE": env_int("ORCHESTRATOR_LOG_PERSISTER_BATCH_SIZE", 20),
    "LOG_PERSISTER_MAX_BATCHES": env_int("ORCHESTRATOR_LOG_PERSISTER_MAX_BATCHES", 25),
    # The shortest `q` a log search across runs takes (characters): shorter ones cannot use the
    # trigram index. Within one run (`flow_run=`) any length is taken.
    "LOG_SEARCH_MIN_CHARS": env_int("ORCHESTRATOR_LOG_SEARCH_MIN_CHARS", 3),
    "AGENT_CLAIM_MAX_RUNS": env_int("ORCHESTRATOR_AGENT_CLAIM_MAX_RUNS", 200),
    # A run its runner handed back (agent gone, heartbeats off) is due again this long after the
    # report (seconds), not at once: the old runner may still be stopping. Agents learn it when they
    # register, and their runners finish a hand-back within half of it (then a watchdog kills what
    # is left 1 s later), so a new attempt never overlaps the old one's processes.
    "HANDBACK_DELAY_SECONDS": env_float("ORCHESTRATOR_HANDBACK_DELAY_SECONDS", 30),
    # The largest task result (compact UTF-8 JSON, bytes) kept for later attempts of a flow run;
    # a bigger one is not kept and the task runs again in a later attempt.
    "TASK_RESULT_MAX_BYTES": env_int("ORCHESTRATOR_TASK_RESULT_MAX_BYTES", 1_048_576),
    # API throttling ("N/second|minute|hour|day"; empty turns it off). Failed key checks count per
    # client address; list/create-run and log endpoints count per API key.
    "THROTTLE_FAILED_AUTH_RATE": os.environ.get("ORCHESTRATOR_THROTTLE_FAILED_AUTH_RATE", "300/minute"),
    "THROTTLE_EXPENSIVE_RATE": os.environ.get("ORCHESTRATOR_THROTTLE_EXPENSIVE_RATE", "6000/minute"),
    # Failed sign-ins (dashboard and admin) per client address and per username; past either, the
    # login form refuses to check passwords until the window ends. Empty turns one off.
    "THROTTLE_FAILED_LOGIN_RATE": os.environ.get("ORCHESTRATOR_THROTTLE_FAILED_LOGIN_RATE", "30/hour"),
    "THROTTLE_FAILED_LOGIN_USER_RATE": os.environ.get("ORCHESTRATOR_THROTTLE_FAILED_LOGIN_USER_RATE", "10/hour"),
    # Who the client is behind reverse proxies (orchestrator/client_address.py): 0 (none), a number
    # of hops, or a tuple of the proxies' networks.
    "TRUSTED_PROXIES": _trusted_proxies(),
    # After the cache (Redis) fails, throttling is off and the cache untouched for this many
    # seconds, then tried again; one warning per interval says so.
    "CACHE_RETRY_SECONDS": env_float("ORCHESTRATOR_CACHE_RETRY_SECONDS", 5),
    # Request bodies (JSON, and JSON text in form fields) may nest objects and arrays this deep.
    # Parameters rarely need more than a handful; at most 500, well below Python's recursion limit
    # (1,000), which json.dumps on the way to the database and back must not reach either.
    "API_MAX_JSON_DEPTH": env_int("ORCHESTRATOR_API_MAX_JSON_DEPTH", 64),
}

for _name in ("THROTTLE_FAILED_AUTH_RATE", "THROTTLE_EXPENSIVE_RATE", "THROTTLE_FAILED_LOGIN_RATE",
              "THROTTLE_FAILED_LOGIN_USER_RATE", "WEBHOOK_THROTTLE_RATE"):
    _rate = ORCHESTRATOR[_name] = ORCHESTRATOR[_name].strip()
    _count, _, _period = _rate.partition("/")
    if _rate and not (_count.isdigit() and _period[:1] in {"s", "m", "h", "d"}):  # as throttles.py reads it
        raise BadEnvironment(f"ORCHESTRATOR_{_name} must be N/second, N/minute, N/hour or N/day, or empty, "
                             f"got {_rate!r}")
if ORCHESTRATOR["HANDBACK_DELAY_SECONDS"] < 4:
    # Half of it for the runner's hand-back, plus its watchdog's 1 s, must end before the run is due.
    raise BadEnvironment(f"ORCHESTRATOR_HANDBACK_DELAY_SECONDS must be at least 4 (a runner's hand-back takes up "
                         f"to half of it, plus 1 s), got {ORCHESTRATOR['HANDBACK_DELAY_SECONDS']:g}")
if ORCHESTRATOR["EVENTS_STREAM_POLL_SECONDS"] <= 0 or ORCHESTRATOR["EVENTS_STREAM_MAX_SECONDS"] <= 0:
    raise BadEnvironment("ORCHESTRATOR_EVENTS_STREAM_POLL_SECONDS and ORCHESTRATOR_EVENTS_STREAM_MAX_SECONDS must be "
                         "more than 0")
if not 0 < ORCHESTRATOR["EVENTS_QUEUE_POLLED_EVERY_SECONDS"] < ORCHESTRATOR["WORK_QUEUE_HEALTH_POLL_SECONDS"]:
    # last_polled is exact to the first only: as long as the second, every queue would look abandoned.
    raise BadEnvironment("ORCHESTRATOR_EVENTS_QUEUE_POLLED_EVERY_SECONDS must be more than 0 and less than "
                         "ORCHESTRATOR_WORK_QUEUE_HEALTH_POLL_SECONDS")
if not 0 <= ORCHESTRATOR["HEARTBEAT_WRITE_BEHIND_SECONDS"] <= 10:
    # A beat late by more than a third of the agents' default 30 s interval would eat into the missed
    # beats the recovery services wait for.
    raise BadEnvironment(f"ORCHESTRATOR_HEARTBEAT_WRITE_BEHIND_SECONDS must be 0..10, "
                         f"got {ORCHESTRATOR['HEARTBEAT_WRITE_BEHIND_SECONDS']:g}")
if not 1 <= ORCHESTRATOR["API_MAX_JSON_DEPTH"] <= 500:
    raise BadEnvironment(f"ORCHESTRATOR_API_MAX_JSON_DEPTH must be 1..500, got {ORCHESTRATOR['API_MAX_JSON_DEPTH']}")

# LOG_FORMAT=json: one JSON object a line (time, level, logger, message, and an exception's
# traceback), for a log shipper; Celery then keeps this configuration instead of its own.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in {"plain", "json"}:
    raise BadEnvironment(f"LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT != "json"
# Outgoing e-mail (automations' send-email action, sent by the deliveries service). Without
# EMAIL_HOST, messages are written to the console (development).
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)  # seconds: a stalled mail server must not hold a delivery pass
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "orchestrator@localhost")
EMAIL_BACKEND = ("django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST
                 else "django.core.mail.backends.console.EmailBackend")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                 "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
