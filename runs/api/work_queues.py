"""Work queues (admins create, edit, delete; operators pause, resume, limit) and agents (read)."""

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from runs.models import Agent, Role, WorkQueue

from .views import WorkspaceScoped


class WorkQueueSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorkQueue
        fields = ["id", "name", "work_pool", "description", "concurrency_limit", "paused", "job_env", "last_polled",
                  "created"]
        read_only_fields = ["paused", "last_polled", "created"]

    def validate_name(self, name):
        clash = WorkQueue.objects.filter(workspace=self.context["request"].workspace, name=name)
        if self.instance:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError(f"This workspace already has a queue named {name}.")
        return name


class ConcurrencyLimitSerializer(serializers.Serializer):
    concurrency_limit = serializers.IntegerField(min_value=0, max_value=2**31 - 1, allow_null=True,
                                                 help_text="Most runs SUBMITTED or RUNNING at once; null: no limit.")


class WorkQueueViewSet(WorkspaceScoped, viewsets.ModelViewSet):
    queryset = WorkQueue.objects.order_by("name")
    serializer_class = WorkQueueSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    action_roles = {"pause": Role.OPERATOR, "resume": Role.OPERATOR, "concurrency_limit": Role.OPERATOR}

    def perform_create(self, serializer):
        serializer.save(workspace=self.request.workspace)

    def _set(self, **fields):
        queue = self.get_object()
        WorkQueue.objects.filter(pk=queue.pk).update(**fields)
        queue.refresh_from_db()
        return Response(WorkQueueSerializer(queue).data)

    @extend_schema(request=None, responses=WorkQueueSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request, *args, **kwargs):
        """A paused queue hands out no runs; runs already claimed carry on."""
        return self._set(paused=True)

    @extend_schema(request=None, responses=WorkQueueSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, *args, **kwargs):
        """The queue hands out runs again."""
        return self._set(paused=False)

    @extend_schema(request=ConcurrencyLimitSerializer, responses=WorkQueueSerializer,
                   examples=[OpenApiExample("At most 4", value={"concurrency_limit": 4}, request_only=True)])
    @action(detail=True, methods=["post"], url_path="concurrency_limit")
    def concurrency_limit(self, request, *args, **kwargs):
        """Set or clear (null) how many of the queue's runs may be active at once."""
        incoming = ConcurrencyLimitSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        return self._set(concurrency_limit=incoming.validated_data["concurrency_limit"])


class AgentSerializer(serializers.ModelSerializer):
    queues = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)

    class Meta:
        model = Agent
        fields = ["id", "name", "queues", "labels", "version", "heartbeat_interval", "last_heartbeat", "status",
                  "created"]
        read_only_fields = fields


class AgentViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    """The agents that have polled this workspace, and whether they are online."""

    queryset = Agent.objects.prefetch_related("queues").order_by("name")
    serializer_class = AgentSerializer
