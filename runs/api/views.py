"""API views. Each is scoped to the workspace in its URL by WorkspaceRolePermission."""

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from runs.models import Flow, FlowRun, Role, Schedule
from runs.scheduling import pause_schedule, reschedule_after_edit, resume_schedule, schedule_future_runs

from . import serializers
from .pagination import RunCursorPagination


class WorkspaceScoped:
    """Limits the queryset to the workspace the permission class resolved from the URL."""

    workspace_field = "workspace"

    def get_queryset(self):
        return super().get_queryset().filter(**{self.workspace_field: self.request.workspace})


class FlowViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Flow.objects.prefetch_related("versions").order_by("name")
    serializer_class = serializers.FlowSerializer


class ScheduleViewSet(WorkspaceScoped, viewsets.ModelViewSet):
    queryset = Schedule.objects.select_related("flow", "work_queue").order_by("flow__name", "slug")
    serializer_class = serializers.ScheduleSerializer
    workspace_field = "flow__workspace"
    action_roles = {"pause": Role.OPERATOR, "resume": Role.OPERATOR}

    def perform_create(self, serializer):
        schedule = serializer.save()
        schedule_future_runs([schedule], timezone.now())

    def perform_update(self, serializer):
        schedule = serializer.save()
        reschedule_after_edit(schedule, timezone.now())

    @extend_schema(request=None, responses=serializers.ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request, *args, **kwargs):
        """Pause the schedule and delete its future auto-scheduled runs that have not started."""
        schedule = self.get_object()
        deleted = pause_schedule(schedule)
        return Response({**self.get_serializer(schedule).data, "runs_deleted": deleted})

    @extend_schema(request=None, responses=serializers.ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, *args, **kwargs):
        """Make the schedule ACTIVE; its next runs exist when this returns."""
        schedule = self.get_object()
        created = resume_schedule(schedule)
        return Response({**self.get_serializer(schedule).data, "runs_created": created})


class FlowRunViewSet(WorkspaceScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = FlowRun.objects.alive().select_related("flow", "work_queue", "agent", "created_by")
    pagination_class = RunCursorPagination

    def get_serializer_class(self):
        return serializers.FlowRunDetailSerializer if self.action == "retrieve" else serializers.FlowRunSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("history__user", "history__agent")
        state = self.request.query_params.get("state")
        if state:
            queryset = queryset.filter(state__in=[s.strip().upper() for s in state.split(",")])
        return queryset
