"""Members and API keys of the workspace: admins only."""

from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from runs.models import ApiKey, Membership, Role

from .views import WorkspaceScoped

ADMIN_ONLY = {name: Role.ADMIN for name in ("list", "retrieve", "create", "partial_update", "destroy")}


class MemberSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "email", "role", "created"]
        read_only_fields = ["created"]


class AddMemberSerializer(serializers.Serializer):
    user = serializers.CharField(max_length=254, help_text="The person's username or email address.")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.VIEWER)

    def validate_user(self, name):
        users = get_user_model().objects.filter(Q(username=name) | Q(email__iexact=name), is_active=True)[:2]
        if len(users) != 1:
            raise serializers.ValidationError("No single active user has this username or email.")
        if Membership.objects.filter(user=users[0], workspace=self.context["request"].workspace).exists():
            raise serializers.ValidationError("This person is already a member; change their role instead.")
        return users[0]


def is_last_admin(membership):
    return membership.role == Role.ADMIN and not Membership.objects.filter(
        workspace=membership.workspace_id, role=Role.ADMIN).exclude(pk=membership.pk).exists()


@extend_schema_view(create=extend_schema(
    request=AddMemberSerializer, responses={201: MemberSerializer},
    examples=[OpenApiExample("Add an operator", value={"user": "ada@example.com", "role": "operator"},
                             request_only=True)],
))
class MemberViewSet(WorkspaceScoped, viewsets.ModelViewSet):
    queryset = Membership.objects.select_related("user").order_by("user__username")
    serializer_class = MemberSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    action_roles = ADMIN_ONLY

    def create(self, request, *args, **kwargs):
        incoming = AddMemberSerializer(data=request.data, context=self.get_serializer_context())
        incoming.is_valid(raise_exception=True)
        member = Membership.objects.create(workspace=request.workspace, **incoming.validated_data)
        return Response(MemberSerializer(member).data, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        # A workspace with no admin could never be managed again, except by a superuser.
        if serializer.validated_data.get("role", Role.ADMIN) != Role.ADMIN and is_last_admin(serializer.instance):
            raise serializers.ValidationError({"role": ["This is the workspace's last admin."]})
        serializer.save()

    def perform_destroy(self, membership):
        if is_last_admin(membership):
            raise serializers.ValidationError({"non_field_errors": ["This is the workspace's last admin."]})
        membership.delete()


class ApiKeySerializer(serializers.ModelSerializer):
    user = serializers.StringRelatedField()
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["id", "name", "role", "prefix", "user", "created", "expires_at", "revoked_at", "revoked",
                  "last_used_at"]
        read_only_fields = fields

    def get_revoked(self, key) -> bool:
        return key.revoked_at is not None


class NewApiKeySerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.OPERATOR)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    for_me = serializers.BooleanField(default=False, help_text="Act as me (history names me), not as a service.")

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Pick a time in the future.")
        return value


class IssuedApiKeySerializer(ApiKeySerializer):
    secret = serializers.CharField(help_text="Shown this once; only its hash is stored.")

    class Meta(ApiKeySerializer.Meta):
        fields = ApiKeySerializer.Meta.fields + ["secret"]
        read_only_fields = fields


@extend_schema_view(
    create=extend_schema(request=NewApiKeySerializer, responses={201: IssuedApiKeySerializer},
                         examples=[OpenApiExample("A CI key", request_only=True,
                                                  value={"name": "ci", "role": "operator",
                                                         "expires_at": "2027-01-01T00:00:00Z"})]),
    destroy=extend_schema(description="Revoke the key: it stops working at once and stays listed as revoked."),
)
class ApiKeyViewSet(WorkspaceScoped, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    queryset = ApiKey.objects.select_related("user").order_by("-created", "-id")
    serializer_class = ApiKeySerializer
    action_roles = ADMIN_ONLY

    def create(self, request, *args, **kwargs):
        incoming = NewApiKeySerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        person = request.user if data["for_me"] and getattr(request.user, "pk", None) else None
        key, secret = ApiKey.issue(workspace=request.workspace, name=data["name"], role=data["role"],
                                   user=person, expires_at=data.get("expires_at"))
        return Response({**ApiKeySerializer(key).data, "secret": secret}, status=status.HTTP_201_CREATED)

    def perform_destroy(self, key):
        ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
