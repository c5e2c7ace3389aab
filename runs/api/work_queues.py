"""Work queues (admins create, edit, delete; operators pause, resume, limit) and agents (read)."""

from drf_spectacular.utils import extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from runs import actions
from runs.audit import Who, snapshot
from runs.models import Agent, Role, WorkQueue

from .schema import request_example, response_example
from .serializers import environment_field
from .views import WorkspaceScoped


@extend_schema_serializer(examples=[
    response_example("A queue", {"id": 2, "name": "gpu", "work_pool": "on-prem", "description": "The A100 boxes",
                                 "concurrency_limit": 4, "paused": False, "job_env": {"CUDA_VISIBLE_DEVICES": "0"},
                                 "last_polled": "2026-11-23T09:59:58Z", "created": "2026-11-01T08:00:00Z"}),
    request_example("A queue", {"name": "gpu", "work_pool": "on-prem", "description": "The A100 boxes",
                                "concurrency_limit": 4, "job_env": {"CUDA_VISIBLE_DEVICES": "0"}}),
])
class WorkQueueSerializer(serializers.ModelSerializer):
    job_env = environment_field("Environment variables for runs of this queue (under the version's).")
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


@extend_schema_serializer(examples=[request_example("At most 4", {"concurrency_limit": 4}),
                                    request_example("No limit", {"concurrency_limit": None})])
class ConcurrencyLimitSerializer(serializers.Serializer):
    concurrency_limit = serializers.IntegerField(min_value=0, max_value=2**31 - 1, allow_null=True,
                                                 help_text="Most runs SUBMITTED or RUNNING at once; null: no limit.")


@extend_schema_view(
    list=extend_schema(description="The workspace's work queues with their limits and whether they are paused."),
    create=extend_schema(description="Add a work queue (admins)."),
    retrieve=extend_schema(description="One work queue; `last_polled` says when an agent last asked it for runs."),
    partial_update=extend_schema(description="Change a queue's name, pool, description, limit or job environment "
                                             "(admins)."),
    destroy=extend_schema(description="Delete a work queue (admins); its runs are kept and lose the queue."),
)
class WorkQueueViewSet(WorkspaceScoped, viewsets.ModelViewSet):
    queryset = WorkQueue.objects.order_by("name")
    serializer_class = WorkQueueSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    action_roles = {"pause": Role.OPERATOR, "resume": Role.OPERATOR, "concurrency_limit": Role.OPERATOR}

    def perform_create(self, serializer):
        actions.save_with_audit(lambda: serializer.save(workspace=self.request.workspace),
                                who=Who.of(self.request, "api"), action="work_queue.create")

    def perform_update(self, serializer):
        actions.save_with_audit(serializer.save, who=Who.of(self.request, "api"), action="work_queue.change",
                                before=snapshot(serializer.instance))

    def perform_destroy(self, queue):
        actions.delete_queue(queue, who=Who.of(self.request, "api"))

    def _set(self, action, **fields):
        queue = actions.set_queue(self.get_object(), who=Who.of(self.request, "api"), action=action, **fields)
        return Response(WorkQueueSerializer(queue).data)

    @extend_schema(request=None, responses=WorkQueueSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request, *args, **kwargs):
        """A paused queue hands out no runs; runs already claimed carry on."""
        return self._set("work_queue.pause", paused=True)

    @extend_schema(request=None, responses=WorkQueueSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, *args, **kwargs):
        """The queue hands out runs again."""
        return self._set("work_queue.resume", paused=False)

    @extend_schema(request=ConcurrencyLimitSerializer, responses=WorkQueueSerializer)
    @action(detail=True, methods=["post"], url_path="concurrency_limit")
    def concurrency_limit(self, request, *args, **kwargs):
        """Set or clear (null) how many of the queue's runs may be active at once."""
        incoming = ConcurrencyLimitSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        return self._set("work_queue.limit", concurrency_limit=incoming.validated_data["concurrency_limit"])


@extend_schema_serializer(examples=[response_example("An agent", {
    "id": 7, "name": "build-host-1", "queues": ["default", "gpu"], "labels": {"os": "linux"}, "version": "0.1.0",
    "heartbeat_interval": 30, "last_heartbeat": "2026-11-23T09:59:41Z", "status": "ONLINE",
    "created": "2026-11-01T08:00:00Z"})])
class AgentSerializer(serializers.ModelSerializer):
    queues = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)

    class Meta:
        model = Agent
        fields = ["id", "name", "queues", "labels", "version", "heartbeat_interval", "last_heartbeat", "status",
                  "created"]
        read_only_fields = fields


@extend_schema_view(
    list=extend_schema(description="Agents that registered with this workspace: their queues, last heartbeat and "
                                   "whether they are ONLINE."),
    retrieve=extend_schema(description="One agent."),
)
class AgentViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    """The agents that have polled this workspace, and whether they are online."""

    queryset = Agent.objects.prefetch_related("queues").order_by("name")
    serializer_class = AgentSerializer
