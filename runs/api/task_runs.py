"""Task runs, read-only: the steps inside the workspace's flow runs."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, viewsets

from runs.models import State, TaskRun

from .views import WorkspaceScoped


class TaskRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskRun
        fields = ["id", "flow_run", "task_key", "dynamic_key", "name", "state", "state_message", "state_changed",
                  "run_count", "max_retries", "start_time", "end_time", "last_heartbeat", "created"]
        read_only_fields = fields


@extend_schema_view(list=extend_schema(parameters=[
    OpenApiParameter("flow_run", str, description="Only the task runs of this flow run (its id)."),
    OpenApiParameter("state", str, description="One or more states, comma-separated."),
]))
class TaskRunViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    queryset = TaskRun.objects.order_by("-created", "id")
    serializer_class = TaskRunSerializer
    workspace_field = "flow_run__workspace"

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        if params.get("flow_run"):
            try:
                queryset = queryset.filter(flow_run_id=serializers.UUIDField().to_internal_value(params["flow_run"]))
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"flow_run": exc.detail}) from None
        if params.get("state"):
            states = [s.strip().upper() for s in params["state"].split(",") if s.strip()]
            if set(states) - set(State.values):
                raise serializers.ValidationError({"state": ["Unknown state."]})
            queryset = queryset.filter(state__in=states)
        return queryset
