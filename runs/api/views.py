"""API views. Each is scoped to the workspace in its URL by WorkspaceRolePermission."""

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from runs import actions, scheduling
from runs.audit import Who, snapshot
from runs.models import Role, Schedule

from . import serializers
from .deletions import ACCEPTED, accepted
from .throttles import ExpensiveEndpointThrottle


class WorkspaceScoped:
    """Limits the queryset to the workspace the permission class resolved from the URL."""

    workspace_field = "workspace"

    def get_queryset(self):
        return super().get_queryset().filter(**{self.workspace_field: self.request.workspace})


@extend_schema_view(
    list=extend_schema(description="The workspace's schedules by flow and slug, each saying in words when it fires."),
    create=extend_schema(description="Add a schedule to a flow (admins). An ACTIVE one has its next runs when this "
                                     "returns."),
    retrieve=extend_schema(description="One schedule with its next 10 fire times, in UTC and in its own zone."),
    update=extend_schema(description="Replace a schedule's definition (admins). Future runs that still match are "
                                     "kept; the others are replaced."),
    partial_update=extend_schema(description="Change some of a schedule's fields (admins). Future runs that still "
                                             "match are kept; the others are replaced."),
    destroy=extend_schema(responses={202: ACCEPTED}, description=(
        "Delete the schedule with its runs (admins). It stops and is gone from every list at once, and its slug is "
        "free; its runs are deleted in the background: the answer (202) is the deletion job.")),
)
class ScheduleViewSet(WorkspaceScoped, viewsets.ModelViewSet):
    queryset = Schedule.objects.select_related("flow", "work_queue").order_by("flow__name", "slug")
    serializer_class = serializers.ScheduleSerializer
    workspace_field = "flow__workspace"
    action_roles = {"pause": Role.OPERATOR, "resume": Role.OPERATOR, "preview": Role.VIEWER, "pin": Role.OPERATOR,
                    "unpin": Role.OPERATOR}
    throttle_classes = [ExpensiveEndpointThrottle]
    expensive_actions = {"preview"}  # up to 100 fire times of any rule: as costly as listing runs

    def get_serializer_context(self):
        # Only one schedule's page shows its next fire times: a list would compute them per row.
        return {**super().get_serializer_context(), "with_next_runs": self.action == "retrieve"}

    def perform_create(self, serializer):
        # One transaction with its runs and its audit entry: when the runs cannot be made, nothing is
        # saved (a 400 naming the field). Also adopts the future runs of a deleted schedule that had
        # this slug, instead of duplicating them.
        actions.save_schedule(serializer.save, who=Who.of(self.request, "api"))

    def perform_update(self, serializer):
        actions.save_schedule(serializer.save, who=Who.of(self.request, "api"), before=snapshot(serializer.instance))

    def destroy(self, request, *args, **kwargs):
        return accepted(actions.delete_schedule(self.get_object(), who=Who.of(request, "api"), now=timezone.now()),
                        request)

    @extend_schema(request=serializers.SchedulePreviewRequestSerializer,
                   responses=serializers.SchedulePreviewSerializer)
    @action(detail=False, methods=["post"])
    def preview(self, request, *args, **kwargs):
        """The next `count` (default 10, at most 100) fire times of a schedule definition, without saving it."""
        incoming = serializers.SchedulePreviewRequestSerializer(data=request.data,
                                                                context=self.get_serializer_context())
        incoming.is_valid(raise_exception=True)
        fields = dict(incoming.validated_data)
        count = fields.pop("count")
        schedule = Schedule(**{"kind": Schedule._meta.get_field("kind").default, **fields})
        return Response({
            "description_text": schedule.describe(),
            "timezone": str(schedule.timezone),
            "next_runs": serializers.ScheduleSerializer.fire_times_data(schedule, timezone.now(), count),
        })

    @extend_schema(request=None, responses=serializers.PausedScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request, *args, **kwargs):
        """Pause the schedule and delete its future auto-scheduled runs that have not started."""
        schedule = self.get_object()
        deleted = actions.pause_schedule(schedule, who=Who.of(request, "api"))
        return Response({**self.get_serializer(schedule).data, "runs_deleted": deleted,
                         "runs_kept": scheduling.runs_that_stay(schedule)})

    @extend_schema(request=None, responses=serializers.ResumedScheduleSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, *args, **kwargs):
        """Make the schedule ACTIVE; its next runs exist when this returns."""
        schedule = self.get_object()
        created = actions.resume_schedule(schedule, who=Who.of(request, "api"))
        return Response({**self.get_serializer(schedule).data, "runs_created": created})

    @extend_schema(request=serializers.PinRequestSerializer, responses=serializers.ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pin(self, request, *args, **kwargs):
        """Pin the schedule to a version of its flow (archived ones too): its runs run that version,
        whatever is registered later. Its runs not claimed yet are re-pointed at once (operators)."""
        schedule = self.get_object()
        incoming = serializers.PinRequestSerializer(data=request.data, context=self.get_serializer_context())
        incoming.is_valid(raise_exception=True)
        actions.pin_schedule(schedule, incoming.validated_data["flow_version"], who=Who.of(request, "api"))
        return Response(self.get_serializer(schedule).data)

    @extend_schema(request=None, responses=serializers.ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def unpin(self, request, *args, **kwargs):
        """Let the schedule follow its flow's latest version again: each run runs the version that is
        the latest when an agent claims it (operators)."""
        schedule = self.get_object()
        actions.pin_schedule(schedule, None, who=Who.of(request, "api"))
        return Response(self.get_serializer(schedule).data)
