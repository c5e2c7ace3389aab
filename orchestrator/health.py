"""GET /healthz: is the database reachable, is the broker reachable. 503 when either is not.

It also lists Towel's verdict per service (healthy, and a reason a person can read), which never
turns the answer into a 503: a stopped beat must not take the web tier out of a load balancer.

Also the answer of every non-API page while the database is unreachable: a 503 with Retry-After
(DatabaseUnavailableMiddleware), not a 500; the API's own views answer the same in runs/api/errors.py.
"""

import logging
import os

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


def database_status():
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"ok": True, "vendor": connection.vendor}
    except Exception as exc:  # any failure to reach it is the answer, not an error of ours
        return {"ok": False, "vendor": connection.vendor, "error": str(exc)[:300]}


def broker_status():
    if settings.REDIS_URL:
        import redis

        try:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
            client.ping()
            return {"ok": True, "transport": "redis"}
        except Exception as exc:
            return {"ok": False, "transport": "redis", "error": str(exc)[:300]}
    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
    ok = os.path.isdir(folder) and os.access(folder, os.W_OK)
    status = {"ok": ok, "transport": "filesystem"}
    if not ok:
        status["error"] = f"broker folder {folder} is missing or not writable"
    return status


def services_status():
    """Towel's verdict per service. A report that fails (e.g. a new release's web process before its
    `migrate`) is written in the answer, never turned into a 500 or a 503."""
    from services.towel import health_report

    try:
        return health_report(timezone.now())
    except (OperationalError, InterfaceError):
        raise  # the database itself went away: that is the database's verdict, not the services'
    except DatabaseError as exc:
        logger.exception("The services' health report failed")
        return {"error": f"the health report failed: {str(exc)[:300]}"}


@never_cache
@require_GET
def healthz(request):
    checks = {"database": database_status(), "broker": broker_status()}
    try:
        checks["services"] = services_status() if checks["database"]["ok"] else {}
    except (OperationalError, InterfaceError) as exc:  # the database went away between the two checks
        checks["database"] = {"ok": False, "vendor": connection.vendor, "error": str(exc)[:300]}
        checks["services"] = {}
    healthy = checks["database"]["ok"] and checks["broker"]["ok"]
    body = {"status": "ok" if healthy else "unavailable", "time": timezone.now().isoformat(), **checks}
    return JsonResponse(body, status=200 if healthy else 503)


class DatabaseUnavailableMiddleware:
    """A view that loses the database (a restart, a failover, a killed connection) answers 503 with
    Retry-After instead of a 500: JSON in the API's error form under /api/, a line of text
    elsewhere. Django closes the broken connection when the request ends; the next one reconnects."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        from runs.api.errors import DATABASE_RETRY_AFTER_SECONDS, database_unavailable_body

        logger.warning("Database unavailable, answered 503 for %s: %s", request.path, str(exception).strip()[:300])
        if request.path.startswith("/api/"):
            response = JsonResponse(database_unavailable_body(), status=503)
        else:
            response = HttpResponse("The database is unreachable right now; try again in a few seconds.\n",
                                    status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
