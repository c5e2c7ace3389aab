"""The audit trail of the workspace (admins): who changed its members, keys, settings, schedules,
queues and secrets, when, and from what to what. Newest first, in cursor pages."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import serializers, viewsets

from runs.models import AuditEntry, Role

from .filtersets import AuditFilter, FilterBackend
from .pagination import KeysetPagination
from .schema import response_example
from .views import WorkspaceScoped


@extend_schema_serializer(examples=[response_example("A pause", {
    "id": 311, "occurred": "2026-11-29T08:12:03Z", "actor": "ada", "via": "dashboard", "action": "schedule.pause",
    "target_type": "schedule", "target_id": "17", "target_name": "nightly-etl/every-night",
    "before": {"status": "ACTIVE"}, "after": {"status": "PAUSED", "runs_deleted": 9}})])
class AuditEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEntry
        fields = ["id", "occurred", "actor", "via", "action", "target_type", "target_id", "target_name", "before",
                  "after"]
        read_only_fields = fields


class AuditPages(KeysetPagination):
    orderings = ("-occurred",)


@extend_schema_view(retrieve=extend_schema(description="One audit entry (admins)."), list=extend_schema(
    description="What was changed in the workspace's setup, newest first (admins); kept as long as its runs "
                "(run_retention_days).",
    parameters=[
        OpenApiParameter("action", str, description="An action (schedule.pause) or a kind of target (schedule)."),
        OpenApiParameter("actor", str, description="A username or api-key:NAME."),
        OpenApiParameter("since", OpenApiTypes.DATETIME, description="occurred ≥ this."),
        OpenApiParameter("until", OpenApiTypes.DATETIME, description="occurred < this."),
    ]))
class AuditEntryViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    queryset = AuditEntry.objects.all()
    serializer_class = AuditEntrySerializer
    pagination_class = AuditPages
    filter_backends = [FilterBackend]
    filterset_class = AuditFilter
    action_roles = {"list": Role.ADMIN, "retrieve": Role.ADMIN}

