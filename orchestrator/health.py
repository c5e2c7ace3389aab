"""GET /healthz: is the database reachable, is the broker reachable. 503 when either is not.

It also lists Towel's verdict per service (healthy, and a reason a person can read), which never
turns the answer into a 503: a stopped beat must not take the web tier out of a load balancer.
"""

import logging
import os

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
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
    except DatabaseError as exc:
        logger.exception("The services' health report failed")
        return {"error": f"the health report failed: {str(exc)[:300]}"}


@never_cache
@require_GET
def healthz(request):
    checks = {"database": database_status(), "broker": broker_status()}
    checks["services"] = services_status() if checks["database"]["ok"] else {}
    healthy = checks["database"]["ok"] and checks["broker"]["ok"]
    body = {"status": "ok" if healthy else "unavailable", "time": timezone.now().isoformat(), **checks}
    return JsonResponse(body, status=200 if healthy else 503)
