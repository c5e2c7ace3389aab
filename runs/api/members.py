"""Administering a workspace: its members and API keys (admins only), and its settings (everyone
reads them, admins change them)."""

from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import generics, mixins, serializers, status, viewsets
from rest_framework.response import Response

from runs import actions
from runs.audit import Who, snapshot
from runs.models import PERSON_ROLE_CHOICES, ApiKey, Membership, Role, Workspace

from .schema import request_example, response_example
from .views import WorkspaceScoped

ADMIN_ONLY = {name: Role.ADMIN for name in ("list", "retrieve", "create", "partial_update", "destroy")}


@extend_schema_serializer(examples=[
    response_example("An operator", {"id": 5, "user": "ada", "email": "ada@example.com", "role": "operator",
                                     "created": "2026-11-01T08:00:00Z"}),
    request_example("Make them an admin", {"role": "admin"}),
])
class MemberSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True)
    email = serializers.CharField(source="user.email", read_only=True, help_text="Empty when the person has none.")

    class Meta:
        model = Membership
        fields = ["id", "user", "email", "role", "created"]
        read_only_fields = ["created"]


@extend_schema_serializer(examples=[request_example("Add an operator", {"user": "ada@example.com",
                                                                        "role": "operator"})])
class AddMemberSerializer(serializers.Serializer):
    user = serializers.CharField(max_length=254, help_text="The person's username or email address.")
    role = serializers.ChoiceField(choices=PERSON_ROLE_CHOICES, default=Role.VIEWER)

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


@extend_schema_view(
    list=extend_schema(description="The workspace's members and their roles (admins)."),
    create=extend_schema(request=AddMemberSerializer, responses={201: MemberSerializer},
                         description="Add a person, by username or email, with a role (admins)."),
    retrieve=extend_schema(description="One membership (admins)."),
    partial_update=extend_schema(description="Change a member's role (admins); the last admin stays an admin."),
    destroy=extend_schema(description="Remove a member (admins); the last admin cannot be removed."),
)
class MemberViewSet(WorkspaceScoped, viewsets.ModelViewSet):
    queryset = Membership.objects.select_related("user").order_by("user__username")
    serializer_class = MemberSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    action_roles = ADMIN_ONLY

    def create(self, request, *args, **kwargs):
        incoming = AddMemberSerializer(data=request.data, context=self.get_serializer_context())
        incoming.is_valid(raise_exception=True)
        member = actions.add_member(request.workspace, incoming.validated_data["user"], incoming.validated_data["role"],
                                    who=Who.of(request, "api"))
        return Response(MemberSerializer(member).data, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        # A workspace with no admin could never be managed again, except by a superuser.
        if serializer.validated_data.get("role", Role.ADMIN) != Role.ADMIN and is_last_admin(serializer.instance):
            raise serializers.ValidationError({"role": ["This is the workspace's last admin."]})
        if "role" in serializer.validated_data:
            actions.change_role(serializer.instance, serializer.validated_data["role"], who=Who.of(self.request, "api"))

    def perform_destroy(self, membership):
        if is_last_admin(membership):
            raise serializers.ValidationError({"non_field_errors": ["This is the workspace's last admin."]})
        actions.remove_member(membership, who=Who.of(self.request, "api"))


API_KEY = {"id": 9, "name": "ci", "role": "operator", "prefix": "orch_Xk2f9QaB", "user": None,
           "created": "2026-11-23T10:00:00Z", "expires_at": "2027-01-01T00:00:00Z", "revoked_at": None,
           "revoked": False, "last_used_at": "2026-11-23T10:05:00Z"}


@extend_schema_serializer(examples=[response_example("A CI key", API_KEY)])
class ApiKeySerializer(serializers.ModelSerializer):
    user = serializers.StringRelatedField(allow_null=True, help_text="The person it acts for; null for a service key.")
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["id", "name", "role", "prefix", "user", "created", "expires_at", "revoked_at", "revoked",
                  "last_used_at"]
        read_only_fields = fields

    def get_revoked(self, key) -> bool:
        return key.revoked_at is not None


@extend_schema_serializer(examples=[request_example("A CI key", {"name": "ci", "role": "operator",
                                                                 "expires_at": "2027-01-01T00:00:00Z"})])
class NewApiKeySerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    role = serializers.ChoiceField(
        choices=Role.choices, default=Role.OPERATOR,
        help_text="viewer, operator or admin; agent for an agent's key (the agents' endpoints only).")
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    for_me = serializers.BooleanField(default=False, help_text="Act as me (history names me), not as a service.")

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Pick a time in the future.")
        return value

    def validate(self, data):
        if data.get("for_me") and data.get("role") == Role.AGENT:
            raise serializers.ValidationError({"for_me": ["An agent key acts for no person: leave for_me false."]})
        return data


@extend_schema_serializer(examples=[response_example("Issued", {
    **API_KEY, "last_used_at": None, "secret": "orch_Xk2f9QaBr7bnT0cJ6w1mVd3sLhYpE8uZ4oKq5gNiAxF"})])
class IssuedApiKeySerializer(ApiKeySerializer):
    secret = serializers.CharField(help_text="Shown this once; only its hash is stored.")

    class Meta(ApiKeySerializer.Meta):
        fields = ApiKeySerializer.Meta.fields + ["secret"]
        read_only_fields = fields


@extend_schema_view(
    list=extend_schema(description="The workspace's API keys, newest first, revoked ones too; never a secret (admins)."),
    create=extend_schema(request=NewApiKeySerializer, responses={201: IssuedApiKeySerializer},
                         description="Issue a key (admins). The answer holds its secret, shown this once; only a "
                                     "hash is stored."),
    retrieve=extend_schema(description="One key: role, expiry, revocation and when it was last used (admins)."),
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
        key, secret = actions.issue_key(request.workspace, name=data["name"], role=data["role"], user=person,
                                        expires_at=data.get("expires_at"), who=Who.of(request, "api"))
        return Response({**ApiKeySerializer(key).data, "secret": secret}, status=status.HTTP_201_CREATED)

    def perform_destroy(self, key):
        actions.revoke_keys(ApiKey.objects.filter(pk=key.pk), who=Who.of(self.request, "api"))


@extend_schema_serializer(examples=[
    response_example("Settings", {"account": "acme", "slug": "prod", "name": "Production",
                                  "run_retention_days": 30, "log_retention_days": 7, "event_retention_days": 30,
                                  "history_kept": "Finished runs are kept 30 days; their logs 7 days.",
                                  "monthly_task_run_quota": None, "created": "2026-11-01T08:00:00Z"}),
    request_example("Keep runs for 90 days", {"run_retention_days": 90}),
    request_example("At most 5,000 successful task runs a month", {"monthly_task_run_quota": 5000}),
    request_example("No quota", {"monthly_task_run_quota": None}),
])
class WorkspaceSettingsSerializer(serializers.ModelSerializer):
    account = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    run_retention_days = serializers.IntegerField(
        min_value=1, max_value=36500, required=False,
        help_text="Days a finished run is kept after it ended; then the retention service deletes it with its task "
                  "runs, history and logs.")
    log_retention_days = serializers.IntegerField(
        min_value=1, max_value=36500, required=False, allow_null=True,
        help_text="Days the logs of finished runs are kept, at most the run retention; null: as long as their run.")
    event_retention_days = serializers.IntegerField(
        min_value=1, max_value=3650, required=False,
        help_text="Days the workspace's events are kept; the partition manager deletes older ones daily.")
    history_kept = serializers.SerializerMethodField(help_text="How long history is kept, in words.")

    monthly_task_run_quota = serializers.IntegerField(
        min_value=1, max_value=2_000_000_000, required=False, allow_null=True,
        help_text="Successful (COMPLETED) task runs a calendar month (UTC) may count; once reached, agents claim "
                  "no new runs until the month ends (the runs wait). Null: no quota. See GET …/usage.")

    class Meta:
        model = Workspace
        fields = ["account", "slug", "name", "run_retention_days", "log_retention_days", "event_retention_days",
                  "history_kept", "monthly_task_run_quota", "created"]
        read_only_fields = ["account", "slug", "created"]

    def get_history_kept(self, workspace) -> str:
        return workspace.retention_sentence()

    def validate(self, data):
        runs = data.get("run_retention_days", getattr(self.instance, "run_retention_days", None))
        logs = data.get("log_retention_days", getattr(self.instance, "log_retention_days", None))
        if logs is not None and runs is not None and logs > runs:
            field = "log_retention_days" if "log_retention_days" in data else "run_retention_days"
            raise serializers.ValidationError({field: [
                f"Logs cannot be kept longer than their runs: log retention {logs} days is more than run retention "
                f"{runs} days."]})
        return data


@extend_schema_view(
    get=extend_schema(description="The workspace's settings; every member may read them."),
    patch=extend_schema(description="Change the workspace's name, run, log or event retention, or its monthly "
                                    "task-run quota (admins)."),
)
class WorkspaceSettingsView(generics.RetrieveUpdateAPIView):
    """The workspace's own settings: every member reads them, admins change them (PATCH)."""

    serializer_class = WorkspaceSettingsSerializer
    http_method_names = ["get", "patch", "head", "options"]

    def get_object(self):
        return self.request.workspace

    def perform_update(self, serializer):
        actions.save_with_audit(serializer.save, who=Who.of(self.request, "api"), action="workspace.settings",
                                before=snapshot(serializer.instance))
