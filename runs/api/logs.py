"""Logs of the workspace's runs, filtered by run, level, source and time.

`source=lazarus` (or zombie-killer, …) is the recovery review: what the services did and why.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import serializers, viewsets

from runs.models import Log, LogLevel

from .filters import uuid_param, within_time_window
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


@extend_schema_view(retrieve=extend_schema(description="One log line."), list=extend_schema(
    description="Log lines of the workspace's runs, oldest first in cursor pages. `source=lazarus` or "
                "`source=zombie-killer` is the recovery review: what those services did to which run, and why.",
    parameters=[
    OpenApiParameter("flow_run", str, description="Only this flow run's logs (its id)."),
    OpenApiParameter("level", str, description="Minimum level: DEBUG, INFO, WARNING, ERROR, CRITICAL or 10..50."),
    OpenApiParameter("source", str, description="agent, lazarus, zombie-killer, …"),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="timestamp ≥ this."),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="timestamp < this."),
]))
class LogViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Log.objects.all()
    serializer_class = LogSerializer
    pagination_class = LogPages
    throttle_classes = [ExpensiveEndpointThrottle]

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        flow_run = uuid_param(params, "flow_run")
        if flow_run:
            queryset = queryset.filter(flow_run_id=flow_run)
        if params.get("level"):
            queryset = queryset.filter(level__gte=level_param(params["level"]))
        if params.get("source"):
            queryset = queryset.filter(source=params["source"])
        return within_time_window(queryset, params, "timestamp")
