"""The workspace's usage: task runs that COMPLETED this month (UTC) against its monthly quota, and the
months before (runs/quota.py). Every member reads it; admins change the quota in the settings."""

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from runs import quota

from .schema import response_example

MAX_MONTHS = 24


class MonthUsageSerializer(serializers.Serializer):
    month = serializers.CharField(help_text="YYYY-MM, UTC.")
    task_runs_completed = serializers.IntegerField()


@extend_schema_serializer(examples=[response_example("Two thirds used", {
    "month": "2026-12", "task_runs_completed": 3312, "limit": 5000, "remaining": 1688, "reached": False,
    "resets_at": "2027-01-01T00:00:00Z",
    "months": [{"month": "2026-12", "task_runs_completed": 3312}, {"month": "2026-11", "task_runs_completed": 4870}]})])
class UsageSerializer(serializers.Serializer):
    month = serializers.CharField(help_text="The current month, YYYY-MM (UTC).")
    task_runs_completed = serializers.IntegerField(help_text="Task runs that COMPLETED this month, each once.")
    limit = serializers.IntegerField(allow_null=True, help_text="monthly_task_run_quota; null: no quota.")
    remaining = serializers.IntegerField(allow_null=True, help_text="What is left this month; null: no quota.")
    reached = serializers.BooleanField(help_text="True: agents claim no new runs until the reset or a raise.")
    resets_at = serializers.DateTimeField(help_text="When this month ends (UTC) and the count starts from 0.")
    months = MonthUsageSerializer(many=True, help_text="This month and the ones before, newest first.")


def usage_of(workspace, now, months=1):
    """The usage answer of `workspace` at `now`, with `months` months of history (two queries at most)."""
    limit = workspace.monthly_task_run_quota
    history = quota.months_back(now, months)
    counts = quota.monthly_counts([workspace.pk], history[-1], history[0])
    used = counts.get((workspace.pk, history[0]), 0)
    return {"month": f"{history[0]:%Y-%m}", "task_runs_completed": used, "limit": limit,
            "remaining": None if limit is None else max(limit - used, 0),
            "reached": limit is not None and used >= limit, "resets_at": quota.resets_at(now),
            "months": [{"month": f"{month:%Y-%m}", "task_runs_completed": counts.get((workspace.pk, month), 0)}
                       for month in history]}


class UsageView(APIView):
    """This month's count of successful task runs against the workspace's quota (every member)."""

    @extend_schema(
        parameters=[OpenApiParameter("months", int, description=f"Months of history, this one included "
                                                                   f"(1 to {MAX_MONTHS}, default 12).")],
        responses={200: UsageSerializer})
    def get(self, request, *args, **kwargs):
        raw = request.query_params.get("months", "12")
        try:
            months = int(raw)
        except ValueError:
            months = 0
        if not 1 <= months <= MAX_MONTHS:
            raise serializers.ValidationError({"months": [f"A whole number from 1 to {MAX_MONTHS}; got {raw!r}."]})
        return Response(UsageSerializer(usage_of(request.workspace, timezone.now(), months)).data)
