"""Task runs, read-only: the steps inside the workspace's flow runs."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import serializers, viewsets

from runs.models import TaskRun

from .filtersets import FilterBackend, TaskRunFilter
from .schema import EXAMPLE_RUN_ID, EXAMPLE_TASK_RUN_ID, response_example
from .views import WorkspaceScoped


@extend_schema_serializer(examples=[response_example("A finished task run", {
    "id": EXAMPLE_TASK_RUN_ID, "flow_run": EXAMPLE_RUN_ID, "task_key": "extract", "dynamic_key": "0",
    "name": "extract", "state": "COMPLETED", "state_message": "", "state_changed": "2026-11-23T01:03:10Z",
    "run_count": 2, "max_retries": 2, "start_time": "2026-11-23T01:00:05Z", "end_time": "2026-11-23T01:03:10Z",
    "last_heartbeat": "2026-11-23T01:03:00Z", "created": "2026-11-23T01:00:05Z"})])
class TaskRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskRun
        fields = ["id", "flow_run", "task_key", "dynamic_key", "name", "state", "state_message", "state_changed",
                  "run_count", "max_retries", "start_time", "end_time", "last_heartbeat", "created"]
        read_only_fields = fields


@extend_schema_view(
    list=extend_schema(parameters=[
        OpenApiParameter("flow_run", str, description="Only the task runs of this flow run (its id)."),
        OpenApiParameter("state", str, description="One or more states, comma-separated."),
    ], description="Task runs of the workspace's flow runs, newest first, filtered by flow run and state."),
    retrieve=extend_schema(description="One task run: its state, attempts and last heartbeat."),
)
class TaskRunViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    queryset = TaskRun.objects.order_by("-created", "id")
    serializer_class = TaskRunSerializer
    workspace_field = "flow_run__workspace"
    filter_backends = [FilterBackend]
    filterset_class = TaskRunFilter

    def get_queryset(self):
        # Task runs of listed runs only: not of runs hidden by retention or of a flow being deleted.
        # The list's own filters: TaskRunFilter (runs/api/filtersets.py).
        return super().get_queryset().filter(flow_run__deleted_at__isnull=True, flow_run__flow__deleted_at__isnull=True)
