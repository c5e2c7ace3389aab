"""GET /metrics: what Prometheus scrapes, read from the database at scrape time.

prometheus-client writes the text format; a collector reads, in a fixed number of grouped
queries whatever the number of rows: runs per workspace and state, due runs per queue (the queue
depth), the oldest heartbeat of a running run per workspace (the heartbeat lag), Towel's ledger per
service (last pass's duration, whether it is healthy, failures in the last hour), agents per
status and the events waiting for the persister.

Who may read it: with ORCHESTRATOR_METRICS_TOKEN set, a request with `Authorization: Bearer
<token>`; without it, only requests from this host (the client address of
orchestrator/client_address.py is a loopback address), so that run counts never leak by default.
"""

import hmac
import ipaddress
import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Max, Min
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from orchestrator.client_address import client_address

logger = logging.getLogger(__name__)

DUE_STATES = ("SCHEDULED", "LATE")


def _workspace_label(row, prefix="workspace__"):
    return f"{row[prefix + 'account__slug']}/{row[prefix + 'slug']}"


class DatabaseCollector:
    def __init__(self, now=None):
        self.now = now

    def collect(self):
        from events.models import PendingEvent
        from runs.models import Agent, FlowRun, State
        from services.models import ServicePass
        from services.towel import health_report

        now = self.now or timezone.now()
        runs = GaugeMetricFamily("orchestrator_flow_runs", "Flow runs by workspace and state (soft-deleted excluded).",
                                 labels=["workspace", "state"])
        for row in (FlowRun.objects.alive().values("workspace__account__slug", "workspace__slug", "state")
                    .annotate(n=Count("id")).order_by()):
            runs.add_metric([_workspace_label(row), row["state"]], row["n"])
        yield runs

        depth = GaugeMetricFamily("orchestrator_queue_depth", "Runs due and not yet claimed, by work queue.",
                                  labels=["workspace", "queue"])
        for row in (FlowRun.objects.alive().filter(state__in=DUE_STATES, scheduled_start__lte=now)
                    .values("workspace__account__slug", "workspace__slug", "work_queue__name")
                    .annotate(n=Count("id")).order_by()):
            depth.add_metric([_workspace_label(row), row["work_queue__name"] or ""], row["n"])
        yield depth

        lag = GaugeMetricFamily("orchestrator_heartbeat_lag_seconds",
                                "Age of the oldest last heartbeat among running flow runs that send them.",
                                labels=["workspace"])
        for row in (FlowRun.objects.alive().filter(state=State.RUNNING, last_heartbeat__isnull=False)
                    .values("workspace__account__slug", "workspace__slug").annotate(oldest=Min("last_heartbeat"))
                    .order_by()):
            lag.add_metric([_workspace_label(row)], max(0.0, (now - row["oldest"]).total_seconds()))
        yield lag

        agents = GaugeMetricFamily("orchestrator_agents", "Agents by workspace and status.",
                                   labels=["workspace", "status"])
        for row in (Agent.objects.values("workspace__account__slug", "workspace__slug", "status")
                    .annotate(n=Count("id")).order_by()):
            agents.add_metric([_workspace_label(row), row["status"]], row["n"])
        yield agents

        report = health_report(now)
        healthy = GaugeMetricFamily("orchestrator_service_healthy", "1 when Towel judges the service healthy.",
                                    labels=["service"])
        duration = GaugeMetricFamily("orchestrator_service_last_pass_seconds", "Duration of the service's last pass.",
                                     labels=["service"])
        failures = GaugeMetricFamily("orchestrator_service_failed_passes_last_hour",
                                     "Failed passes of the service in the last hour.", labels=["service"])
        # The latest ledger row per service: one grouped subquery.
        last = dict(ServicePass.objects.filter(id__in=ServicePass.objects.values("service").annotate(
            last=Max("id")).values("last")).values_list("service", "duration_ms"))
        failed = dict(ServicePass.objects.filter(ok=False, started__gte=now - timedelta(hours=1))
                      .values("service").annotate(n=Count("id")).order_by().values_list("service", "n"))
        for name, verdict in report.items():
            healthy.add_metric([name], 1.0 if verdict["healthy"] else 0.0)
            if name in last:
                duration.add_metric([name], last[name] / 1000.0)
            failures.add_metric([name], failed.get(name, 0))
        yield healthy
        yield duration
        yield failures

        buffered = GaugeMetricFamily("orchestrator_events_buffered",
                                     "Events waiting for the persister, by buffer.", labels=["buffer"])
        buffered.add_metric(["table"], PendingEvent.objects.count())
        try:
            from events.buffer import redis_client, stream_key

            client = redis_client()
            if client is not None:
                buffered.add_metric(["redis"], client.xlen(stream_key()))
        except Exception as exc:  # Redis down: the other figures still answer
            logger.warning("Could not read the event stream's length: %s", exc)
        yield buffered

        waiting = GaugeMetricFamily("orchestrator_log_batches_buffered",
                                    "Accepted log batches waiting in the Redis stream for the log persister.")
        try:
            from runs.logs import ingest

            waiting.add_metric([], ingest.stream_length())
        except Exception as exc:  # Redis down: the other figures still answer
            logger.warning("Could not read the log stream's length: %s", exc)
        yield waiting


def _allowed(request):
    token = settings.ORCHESTRATOR["METRICS_TOKEN"]
    if token:
        given = request.headers.get("Authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode())
    try:
        return ipaddress.ip_address(client_address(request)).is_loopback
    except ValueError:
        return False


@never_cache
@require_GET
def metrics(request):
    if not _allowed(request):
        return HttpResponse("Forbidden: set ORCHESTRATOR_METRICS_TOKEN and scrape with it as a Bearer token, "
                            "or scrape from this host.\n", status=403, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

