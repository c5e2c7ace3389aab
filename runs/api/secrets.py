"""A workspace's secrets: written, replaced and deleted by admins; their names listed for operators.

A value goes in and never comes out: every answer holds the name, when it was written and by
whom. Runs get values only through the claim (runs/api/agents.py).
"""

from django.db import IntegrityError
from drf_spectacular.utils import extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from runs import actions, vault
from runs.audit import Who
from runs.models import Role, Secret
from runs.models.validators import SECRET_NAME_PATTERN

from .schema import request_example, response_example
from .views import WorkspaceScoped


@extend_schema_serializer(examples=[
    request_example("A database password", {"name": "DB_PASSWORD", "value": "correct horse battery staple"}),
    response_example("As listed", {"name": "DB_PASSWORD", "created": "2026-11-29T08:00:00Z",
                                   "updated": "2026-11-29T08:00:00Z", "updated_by": "ada"}),
])
class SecretSerializer(serializers.ModelSerializer):
    name = serializers.RegexField(SECRET_NAME_PATTERN, max_length=100,
                                  help_text="The environment variable it becomes in a run: letters, digits and _, "
                                            "not first a digit.")
    value = serializers.CharField(write_only=True, max_length=vault.MAX_VALUE_CHARS, trim_whitespace=False,
                                  style={"input_type": "password"},
                                  help_text="The value; never shown again, not even to admins.")

    class Meta:
        model = Secret
        fields = ["name", "value", "created", "updated", "updated_by"]
        read_only_fields = ["created", "updated", "updated_by"]


@extend_schema_serializer(examples=[request_example("A new value", {"value": "correct horse battery staple 2"})])
class SecretValueSerializer(serializers.Serializer):
    value = serializers.CharField(max_length=vault.MAX_VALUE_CHARS, trim_whitespace=False,
                                  style={"input_type": "password"}, help_text="The new value.")


@extend_schema_view(
    list=extend_schema(description="The workspace's secrets by name, with who wrote each last and when; never a "
                                   "value (operators)."),
    retrieve=extend_schema(description="One secret's name, who wrote it last and when; never its value (operators)."),
    create=extend_schema(description="Store a secret, encrypted (admins). The answer holds no value."),
    update=extend_schema(request=SecretValueSerializer, responses={200: SecretSerializer},
                         description="Replace a secret's value (admins)."),
    destroy=extend_schema(description="Delete a secret (admins); runs that need it fail until it exists again."),
)
class SecretViewSet(WorkspaceScoped, mixins.CreateModelMixin, mixins.UpdateModelMixin, mixins.DestroyModelMixin,
                    viewsets.ReadOnlyModelViewSet):
    """Secrets of the workspace: write-only values. Viewers see nothing of them."""

    queryset = Secret.objects.order_by("name")
    serializer_class = SecretSerializer
    lookup_field = "name"
    lookup_value_regex = r"[A-Za-z_][A-Za-z0-9_]{0,99}"
    http_method_names = ["get", "post", "put", "delete", "head", "options"]
    action_roles = {"list": Role.OPERATOR, "retrieve": Role.OPERATOR, "create": Role.ADMIN, "update": Role.ADMIN,
                    "destroy": Role.ADMIN}

    def create(self, request, *args, **kwargs):
        incoming = SecretSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        secret = Secret(workspace=request.workspace, name=incoming.validated_data["name"])
        try:
            actions.write_secret(secret, incoming.validated_data["value"], who=Who.of(request, "api"))
        except IntegrityError:
            raise serializers.ValidationError(
                {"name": [f"This workspace already has a secret named {secret.name}; PUT a new value to it instead."]}
            ) from None
        return Response(SecretSerializer(secret).data, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        secret = self.get_object()
        incoming = SecretValueSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        actions.write_secret(secret, incoming.validated_data["value"], who=Who.of(request, "api"))
        return Response(SecretSerializer(secret).data)

    def perform_destroy(self, secret):
        actions.delete_secret(secret, who=Who.of(self.request, "api"))
