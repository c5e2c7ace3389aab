"""Flow versions, read and compared: what a deploy changed (entrypoint, default parameters, job_env,
secrets). Registering a version stays with its flow (`flows/{id}/versions/`, POST)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from runs.models import FlowVersion, Role
from runs.versions import compare_versions

from .filters import int_param
from .schema import response_example
from .serializers import VERSION, FlowVersionSerializer
from .views import WorkspaceScoped

# Ids beyond a bigint are no version (and never reach the database, which would refuse them).
MAX_ID = 2**63 - 1


@extend_schema_serializer(examples=[response_example("One version", {**VERSION, "flow": 4,
                                                                     "flow_name": "nightly-etl"})])
class FlowVersionDetailSerializer(FlowVersionSerializer):
    flow_name = serializers.CharField(source="flow.name", read_only=True)

    class Meta(FlowVersionSerializer.Meta):
        fields = ["id", "flow", "flow_name", *FlowVersionSerializer.Meta.fields[1:]]


class VersionLabelSerializer(serializers.ModelSerializer):
    class Meta:
        model = FlowVersion
        fields = ["id", "version", "entrypoint", "is_latest", "archived", "created"]


class EntrypointChangeSerializer(serializers.Serializer):
    old = serializers.CharField()
    new = serializers.CharField()
    changed = serializers.BooleanField()


class ParameterSerializer(serializers.Serializer):
    key = serializers.CharField()
    value = serializers.JSONField(help_text="The default.")
    type = serializers.CharField(help_text="JSON type: string, integer, number, boolean, null, array or object.")


class ParameterChangeSerializer(serializers.Serializer):
    key = serializers.CharField()
    old_value = serializers.JSONField()
    new_value = serializers.JSONField()
    old_type = serializers.CharField()
    new_type = serializers.CharField()


class ParametersDiffSerializer(serializers.Serializer):
    added = ParameterSerializer(many=True)
    removed = ParameterSerializer(many=True)
    changed = ParameterChangeSerializer(many=True, help_text="A new default, or a new type.")
    unchanged = serializers.IntegerField(help_text="How many keys are the same in both.")


class EnvVariableSerializer(serializers.Serializer):
    key = serializers.CharField()
    value = serializers.JSONField()


class EnvChangeSerializer(serializers.Serializer):
    key = serializers.CharField()
    old_value = serializers.JSONField()
    new_value = serializers.JSONField()


class JobEnvDiffSerializer(serializers.Serializer):
    added = EnvVariableSerializer(many=True)
    removed = EnvVariableSerializer(many=True)
    changed = EnvChangeSerializer(many=True)
    unchanged = serializers.IntegerField()


class SecretsDiffSerializer(serializers.Serializer):
    added = serializers.ListField(child=serializers.CharField(), help_text="Names only: values never leave the vault.")
    removed = serializers.ListField(child=serializers.CharField())
    unchanged = serializers.IntegerField()


@extend_schema_serializer(examples=[response_example("A deploy that moved the entrypoint", {
    "flow": 4, "flow_name": "nightly-etl",
    "base": {"id": 11, "version": "1.4.1", "entrypoint": "etl.flows:nightly", "is_latest": False, "archived": True,
             "created": "2026-11-13T09:30:00Z"},
    "head": {"id": 12, "version": "1.4.2", "entrypoint": "etl.nightly:run", "is_latest": True, "archived": False,
             "created": "2026-11-20T09:30:00Z"},
    "identical": False,
    "entrypoint": {"old": "etl.flows:nightly", "new": "etl.nightly:run", "changed": True},
    "parameters": {"added": [{"key": "full", "value": False, "type": "boolean"}], "removed": [],
                   "changed": [{"key": "day", "old_value": "yesterday", "new_value": 1, "old_type": "string",
                                "new_type": "integer"}], "unchanged": 0},
    "job_env": {"added": [], "removed": [{"key": "DEBUG", "value": "1"}],
                "changed": [{"key": "TZ", "old_value": "UTC", "new_value": "Europe/Berlin"}], "unchanged": 0},
    "secrets": {"added": ["WAREHOUSE_TOKEN"], "removed": [], "unchanged": 1},
})])
class VersionComparisonSerializer(serializers.Serializer):
    flow = serializers.IntegerField(source="base.flow_id")
    flow_name = serializers.CharField(source="base.flow.name")
    base = VersionLabelSerializer()
    head = VersionLabelSerializer()
    identical = serializers.BooleanField(help_text="True when nothing below changed.")
    entrypoint = EntrypointChangeSerializer()
    parameters = ParametersDiffSerializer(help_text="The default parameters, key by key, with their JSON types.")
    job_env = JobEnvDiffSerializer(help_text="Environment variables, key by key, with old and new values.")
    secrets = SecretsDiffSerializer(help_text="Names of the secrets the runs get.")


COMPARE_PARAMETERS = [
    OpenApiParameter("base", OpenApiTypes.INT, required=True, description="Id of the version compared from "
                                                                           "(usually the older)."),
    OpenApiParameter("head", OpenApiTypes.INT, required=True, description="Id of a version of the same flow."),
]


@extend_schema_view(
    list=extend_schema(
        description="The workspace's flow versions, newest first, in pages; `flow` (an id) keeps one flow's.",
        parameters=[OpenApiParameter("flow", OpenApiTypes.INT, description="Only this flow's versions.")]),
    retrieve=extend_schema(description="One version, with its flow."),
)
class FlowVersionViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    """Versions of the workspace's flows. Everyone in the workspace may read and compare them."""

    queryset = FlowVersion.objects.select_related("flow").order_by("-created", "-id")
    serializer_class = FlowVersionDetailSerializer
    workspace_field = "flow__workspace"
    action_roles = {"compare": Role.VIEWER}

    def filter_queryset(self, queryset):
        if self.action == "list":
            flow = int_param(self.request.query_params, "flow", minimum=1)
            if flow is not None:
                queryset = queryset.filter(flow_id=flow) if flow <= MAX_ID else queryset.none()
        return queryset

    def _version_param(self, name):
        """The version a query parameter names, in this workspace; a 400 naming the parameter otherwise."""
        value = int_param(self.request.query_params, name, minimum=1)
        if value is None:
            raise serializers.ValidationError({name: ["Give the id of a version (see flow_versions/?flow=…)."]})
        version = self.get_queryset().filter(pk=value).first() if value <= MAX_ID else None
        if version is None:
            raise serializers.ValidationError({name: [f"No version {value} in this workspace."]})
        return version

    @extend_schema(parameters=COMPARE_PARAMETERS, responses=VersionComparisonSerializer)
    @action(detail=False, methods=["get"])
    def compare(self, request, *args, **kwargs):
        """What changed from version `base` to version `head` of one flow: entrypoint, default
        parameters (with types), job_env (old and new values) and secret names."""
        base, head = self._version_param("base"), self._version_param("head")
        if base.flow_id != head.flow_id:
            raise serializers.ValidationError({"head": [
                f"Version {head.pk} is of flow {head.flow.name} and version {base.pk} of flow {base.flow.name}: "
                f"compare two versions of one flow."]})
        return Response(VersionComparisonSerializer(compare_versions(base, head)).data)
