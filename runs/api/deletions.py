"""Background deletions: deleting a flow or a schedule answers 202 with its job at once; the job's
progress is read here (admins, like the audit trail: it names who deleted what)."""

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import serializers, status, viewsets
from rest_framework.response import Response

from runs.models import DeletionJob, Role

from .schema import response_example

JOB = {"id": "6f1c0a8e-3b8d-4e0f-9d55-0b7f7f1f8a11", "target_type": "flow", "target_id": "42",
       "target_name": "nightly-etl", "state": "RUNNING", "runs_deleted": 41000, "rows_deleted": 389112,
       "requested_by": "ada", "via": "api", "attempts": 1, "created": "2026-12-07T01:00:00Z",
       "started": "2026-12-07T01:00:01Z", "finished": None, "error": "",
       "url": "/api/accounts/acme/workspaces/prod/deletion_jobs/6f1c0a8e-3b8d-4e0f-9d55-0b7f7f1f8a11/"}


@extend_schema_serializer(examples=[response_example("Half-way", JOB)])
class DeletionJobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField(help_text="Where to follow its progress.")

    class Meta:
        model = DeletionJob
        fields = ["id", "target_type", "target_id", "target_name", "state", "runs_deleted", "rows_deleted",
                  "requested_by", "via", "attempts", "created", "started", "finished", "error", "url"]
        read_only_fields = fields

    def get_url(self, job) -> str:
        request = self.context.get("request")
        if request is None or not job.workspace_id:
            return ""
        kwargs = request.parser_context["kwargs"]
        return f"/api/accounts/{kwargs['account']}/workspaces/{kwargs['workspace']}/deletion_jobs/{job.pk}/"


ACCEPTED = OpenApiResponse(DeletionJobSerializer, description="Marked deleted; its rows go in the background.",
                           examples=[OpenApiExample("Accepted", value={**JOB, "state": "PENDING", "runs_deleted": 0,
                                                                       "rows_deleted": 0, "started": None},
                                                    response_only=True)])


def accepted(job, request):
    """The 202 answer of a deletion: the job, whose `url` shows its progress."""
    if job is None:  # deleted by another request a moment ago
        return Response(status=status.HTTP_204_NO_CONTENT)
    data = DeletionJobSerializer(job, context={"request": request}).data
    return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})


@extend_schema_view(
    list=extend_schema(description="Background deletions of the workspace, newest first: what, who, state, rows "
                                   "deleted so far (admins)."),
    retrieve=extend_schema(description="One background deletion and its progress (admins)."),
)
class DeletionJobViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = DeletionJob.objects.order_by("-created", "-id")
    serializer_class = DeletionJobSerializer
    action_roles = {"list": Role.ADMIN, "retrieve": Role.ADMIN}

    def get_queryset(self):
        return super().get_queryset().filter(workspace=self.request.workspace)
