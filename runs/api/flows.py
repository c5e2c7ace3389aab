"""Flows and their versions. Registering a version promotes it to latest."""

from drf_spectacular.utils import extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from runs import actions
from runs.audit import Who
from runs.models import Flow, Role
from runs.models.validators import MAX_SECRETS_PER_VERSION, SECRET_NAME_PATTERN

from .deletions import ACCEPTED, accepted
from .schema import request_example
from .serializers import FlowSerializer, FlowVersionSerializer, environment_field
from .views import WorkspaceScoped

@extend_schema_serializer(examples=[request_example("A version", {
    "entrypoint": "etl.flows:nightly", "version": "1.4.2", "parameters": {"day": "yesterday"},
    "job_env": {"TZ": "UTC"}, "secrets": ["DB_PASSWORD"]})])
class RegisterVersionSerializer(serializers.Serializer):
    entrypoint = serializers.RegexField(r"^[\w.]+:[\w.]+$", max_length=500,
                                        help_text="module:function, imported by the agent.")
    version = serializers.CharField(max_length=100, required=False, allow_blank=True)
    parameters = serializers.DictField(required=False, help_text="Default parameters of the flow.")
    job_env = environment_field("Environment variables for every run of this version (not for secrets: see "
                                "`secrets`).")
    secrets = serializers.ListField(
        child=serializers.RegexField(SECRET_NAME_PATTERN, max_length=100), required=False,
        max_length=MAX_SECRETS_PER_VERSION,
        help_text="Names of the workspace's secrets every run of this version gets as environment variables.")


@extend_schema_serializer(examples=[request_example("Flow with a first version", {
    "name": "nightly-etl", "description": "Loads yesterday's orders", "version": {"entrypoint": "etl.flows:nightly"}})])
class FlowCreateSerializer(serializers.ModelSerializer):
    version = RegisterVersionSerializer(required=False, help_text="Registers a first version too.")

    class Meta:
        model = Flow
        fields = ["name", "description", "version"]

    def validate_name(self, name):
        if Flow.objects.filter(workspace=self.context["request"].workspace, name=name).exists():
            raise serializers.ValidationError(f"This workspace already has a flow named {name}.")
        return name


@extend_schema_view(
    list=extend_schema(description="The workspace's flows by name, each with its latest version."),
    create=extend_schema(request=FlowCreateSerializer, responses={201: FlowSerializer},
                         description="Register a flow, and with `version` its first version (operators)."),
    retrieve=extend_schema(description="One flow with its latest version."),
    partial_update=extend_schema(description="Change a flow's name or description (operators)."),
    destroy=extend_schema(responses={202: ACCEPTED}, description=(
        "Delete the flow with its versions, schedules, runs and logs (admins). It is gone from every list at once "
        "and its name is free; the rows are deleted in the background: the answer (202) is the deletion job, "
        "whose `url` shows its progress.")),
)
class FlowViewSet(WorkspaceScoped, mixins.CreateModelMixin, mixins.UpdateModelMixin, mixins.DestroyModelMixin,
                  viewsets.ReadOnlyModelViewSet):
    """Flows of the workspace. Operators register flows and versions; admins delete flows."""

    queryset = Flow.objects.prefetch_related("versions").order_by("name")
    serializer_class = FlowSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    action_roles = {"create": Role.OPERATOR, "partial_update": Role.OPERATOR, "versions": Role.VIEWER,
                    "register_version": Role.OPERATOR, "destroy": Role.ADMIN}

    def get_serializer_class(self):
        return FlowCreateSerializer if self.action == "create" else FlowSerializer

    def create(self, request, *args, **kwargs):
        incoming = FlowCreateSerializer(data=request.data, context=self.get_serializer_context())
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        version = data.pop("version", None)
        flow = Flow.objects.create(workspace=request.workspace, **data)
        if version:
            flow.register_version(**version)
        flow = self.get_queryset().get(pk=flow.pk)
        return Response(FlowSerializer(flow).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        return accepted(actions.delete_flow(self.get_object(), who=Who.of(request, "api")), request)

    @extend_schema(responses=FlowVersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request, *args, **kwargs):
        """Every version of the flow, newest first, in pages (a flow registered on every deploy has many)."""
        flow = self.get_object()
        page = self.paginate_queryset(flow.versions.order_by("-created", "-id"))
        return self.get_paginated_response(FlowVersionSerializer(page, many=True).data)

    @extend_schema(request=RegisterVersionSerializer, responses={201: FlowVersionSerializer})
    @versions.mapping.post
    def register_version(self, request, *args, **kwargs):
        """Register a version; it becomes the latest and earlier ones are archived."""
        flow = self.get_object()
        incoming = RegisterVersionSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        version = flow.register_version(**incoming.validated_data)
        return Response(FlowVersionSerializer(version).data, status=status.HTTP_201_CREATED)
