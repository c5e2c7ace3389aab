"""Logs of the workspace's runs, filtered by run, level, source, time and text; a run's download.

`source=lazarus` (or zombie-killer, …) is the recovery review: what the services did and why.
"""

import django_filters
from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_serializer, extend_schema_view)
from rest_framework import exceptions, serializers, viewsets
from rest_framework.decorators import action

from runs.logs import reading
from runs.models import FlowRun, Log, LogLevel

from .filters import uuid_param
from .filtersets import FilterBackend, TextFilter, TimeFilter, UUIDFilter
from .pagination import KeysetPagination
from .schema import EXAMPLE_RUN_ID, response_example
from .throttles import ExpensiveEndpointThrottle
from .views import WorkspaceScoped


@extend_schema_serializer(examples=[response_example("What Lazarus did", {
    "id": 90211, "flow_run": EXAMPLE_RUN_ID, "task_run": None, "level": 30, "level_name": "WARNING",
    "message": "Rescheduled by Lazarus (attempt 2 of 10): no task run was SUBMITTED or RUNNING for 612 s.",
    "timestamp": "2026-11-23T01:20:00Z", "source": "lazarus"})])
class LogSerializer(serializers.ModelSerializer):
    level_name = serializers.ChoiceField(choices=[label for _, label in LogLevel.choices], source="get_level_display",
                                         read_only=True)

    class Meta:
        model = Log
        fields = ["id", "flow_run", "task_run", "level", "level_name", "message", "timestamp", "source"]
        read_only_fields = fields


class LogPages(KeysetPagination):
    orderings = ("timestamp",)
    max_page_size = 1000


def level_param(raw):
    """A minimum level from a name (WARNING) or a number (30)."""
    names = {label.upper(): value for value, label in LogLevel.choices}
    if raw.upper() in names:
        return names[raw.upper()]
    # "²".isdigit() is True but int("²") fails, and int() refuses strings of over 4,300 digits.
    if raw.isascii() and raw.isdigit() and len(raw) <= 3 and int(raw) <= 100:
        return int(raw)
    raise serializers.ValidationError({"level": [f"Use a level name ({', '.join(names)}) or a number."]})


def search_param(params, within_run):
    """The `q` text, or None. Across runs it needs LOG_SEARCH_MIN_CHARS characters (shorter cannot
    use the trigram index); within one run any length is bounded by that run's lines."""
    text = params.get("q")
    if text is None or text == "":
        return None
    if len(text) > reading.SEARCH_MAX_CHARS:
        raise serializers.ValidationError({"q": [f"At most {reading.SEARCH_MAX_CHARS} characters."]})
    if "\x00" in text:
        raise serializers.ValidationError({"q": ["Null characters are not allowed."]})
    shortest = settings.ORCHESTRATOR["LOG_SEARCH_MIN_CHARS"]
    if not within_run and len(text) < shortest:
        raise serializers.ValidationError({"q": [
            f"Search for at least {shortest} characters, or name a run (flow_run) to search its logs for less."]})
    return text


class LogFilter(django_filters.FilterSet):
    """flow_run, level (a name or 10..50), source, q (text; see search_param), since, until."""

    flow_run = UUIDFilter(field_name="flow_run_id")
    level = django_filters.CharFilter(method="at_least")
    source = TextFilter(field_name="source", max_length=24)
    q = django_filters.CharFilter(method="search")
    since = TimeFilter(field_name="timestamp", lookup_expr="gte")
    until = TimeFilter(field_name="timestamp", lookup_expr="lt")

    class Meta:
        model = Log
        fields = []

    def at_least(self, queryset, name, value):
        return queryset.filter(level__gte=level_param(value))

    def search(self, queryset, name, value):
        text = search_param({"q": value}, within_run=bool(self.data.get("flow_run")))
        return reading.search(queryset, text) if text else queryset


@extend_schema_view(retrieve=extend_schema(description="One log line."), list=extend_schema(
    description="Log lines of the workspace's runs, oldest first in cursor pages. `source=lazarus` or "
                "`source=zombie-killer` is the recovery review: what those services did to which run, and why.",
    parameters=[
    OpenApiParameter("flow_run", str, description="Only this flow run's logs (its id)."),
    OpenApiParameter("level", str, description="Minimum level: DEBUG, INFO, WARNING, ERROR, CRITICAL or 10..50."),
    OpenApiParameter("source", str, description="agent, lazarus, zombie-killer, …"),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="timestamp ≥ this."),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="timestamp < this."),
    OpenApiParameter("q", str, description="Only lines whose message contains this text, ignoring case (at most "
                                           "200 characters; at least ORCHESTRATOR_LOG_SEARCH_MIN_CHARS, default 3, "
                                           "unless flow_run is given). Indexed on PostgreSQL (pg_trgm)."),
]), download=extend_schema(
    description="A run's log lines as a file, oldest first, streamed (any number of lines, in bounded memory). "
                "Takes the list's filters (level, source, since, until, q); `flow_run` is required.",
    parameters=[
        OpenApiParameter("flow_run", str, required=True, description="The run whose logs to download (its id)."),
        OpenApiParameter("as", str, enum=list(reading.FORMATS), description="text (default): one line per log "
                         "line, `<UTC time> <LEVEL> <source> [task=<id>] <message>`; ndjson: one JSON object per "
                         "line, the list's fields."),
        OpenApiParameter("level", str), OpenApiParameter("source", str), OpenApiParameter("q", str),
        OpenApiParameter("since", OpenApiTypes.DATETIME), OpenApiParameter("until", OpenApiTypes.DATETIME),
    ],
    responses={
        (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="as=text", examples=[OpenApiExample(
            "Text", media_type="text/plain", value="2026-11-23T02:00:01.000000Z INFO agent Extracting 2026-11-22\n"
                                                   "2026-11-23T02:00:03.120000Z WARNING agent task=3c1f0b7e-9d2a-4e55-"
                                                   "8f0c-2b8d6a1e4f90 Slow source; retrying\n")]),
        (200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR, description="as=ndjson", examples=[
            OpenApiExample("NDJSON", media_type="application/x-ndjson", value=(
                '{"id": 90211, "timestamp": "2026-11-23T02:00:01.000000Z", "level": 20, "level_name": "INFO", '
                '"source": "agent", "flow_run": "' + EXAMPLE_RUN_ID + '", "task_run": null, '
                '"message": "Extracting 2026-11-22"}\n'))]),
    }))
class LogViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Log.objects.all()
    serializer_class = LogSerializer
    pagination_class = LogPages
    throttle_classes = [ExpensiveEndpointThrottle]

    filter_backends = [FilterBackend]
    filterset_class = LogFilter
    filtered_actions = {"list", "download"}

    def get_queryset(self):
        # Lines of listed runs only: not of runs hidden by retention or of a flow being deleted.
        return super().get_queryset().filter(flow_run__deleted_at__isnull=True, flow_run__flow__deleted_at__isnull=True)

    @action(detail=False, methods=["get"], pagination_class=None)
    def download(self, request, *args, **kwargs):
        kind = request.query_params.get("as") or "text"
        if kind not in reading.FORMATS:
            raise serializers.ValidationError({"as": [f"Choose one of {', '.join(reading.FORMATS)}."]})
        run_id = uuid_param(request.query_params, "flow_run")
        if run_id is None:
            raise serializers.ValidationError({"flow_run": ["Name the run whose logs to download (its id)."]})
        if not FlowRun.objects.filter(pk=run_id, workspace=request.workspace).exists():
            raise exceptions.NotFound("No such flow run in this workspace.")
        return reading.download_response(self.filter_queryset(self.get_queryset()), kind, run_id)
