"""Serializers of the public API."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from rest_framework import serializers
from timezone_field.rest_framework import TimeZoneSerializerField

from runs.models import Flow, FlowRun, FlowVersion, Schedule, StateChange, WorkQueue
from runs.schedules import validate_schedule


class FlowVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = FlowVersion
        fields = ["id", "version", "entrypoint", "parameters", "job_env", "is_latest", "archived", "created"]


class FlowSerializer(serializers.ModelSerializer):
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Flow
        fields = ["id", "name", "description", "created", "latest_version"]

    def get_latest_version(self, flow) -> dict | None:
        latest = [v for v in flow.versions.all() if v.is_latest]
        return FlowVersionSerializer(latest[0]).data if latest else None


class WorkspaceRelatedField(serializers.SlugRelatedField):
    """A related object named within the request's workspace; another workspace's is 'not found'."""

    def get_queryset(self):
        request = self.context["request"]
        return super().get_queryset().filter(**{self.workspace_lookup: request.workspace})

    def __init__(self, *args, workspace_lookup="workspace", **kwargs):
        self.workspace_lookup = workspace_lookup
        super().__init__(*args, **kwargs)


class ScheduleSerializer(serializers.ModelSerializer):
    flow = WorkspaceRelatedField(slug_field="name", queryset=Flow.objects.all())
    work_queue = WorkspaceRelatedField(slug_field="name", queryset=WorkQueue.objects.all(), required=False,
                                       allow_null=True)
    timezone = TimeZoneSerializerField(use_pytz=False, required=False)
    description_text = serializers.SerializerMethodField(help_text="When it fires, in words.")
    next_runs = serializers.SerializerMethodField(
        help_text="On a single schedule: its next 10 fire times (UTC and local), computed from its definition.")

    class Meta:
        model = Schedule
        fields = [
            "id", "flow", "slug", "description", "kind", "interval_seconds", "anchor", "cron", "rrule",
            "calendar", "timezone", "dst_nonexistent", "dst_ambiguous", "status", "parameters", "work_queue",
            "catchup_max_runs", "only_newest_when_late", "created", "updated", "description_text", "next_runs",
        ]
        read_only_fields = ["status", "created", "updated"]
        # Uniqueness of (flow, slug) is checked in validate(), so the error names the slug field.
        validators = []

    def get_description_text(self, schedule) -> str:
        return schedule.describe()

    def get_next_runs(self, schedule) -> list[dict] | None:
        if not self.context.get("with_next_runs"):
            return None
        return self.fire_times_data(schedule, timezone.now(), 10)

    @staticmethod
    def fire_times_data(schedule, after, count):
        """The next `count` fire times of `schedule` after `after`, each in UTC and in its own zone."""
        zone = schedule.timezone
        return [{"utc": when.isoformat().replace("+00:00", "Z"), "local": when.astimezone(zone).isoformat()}
                for when in schedule.next_fire_times(after, count)]

    def validate(self, attrs):
        instance = Schedule(**{**self._current_values(), **attrs})
        try:
            validate_schedule(instance)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        flow = attrs.get("flow") or (self.instance.flow if self.instance else None)
        slug = attrs.get("slug") or (self.instance.slug if self.instance else None)
        clash = Schedule.objects.filter(flow=flow, slug=slug)
        if self.instance:
            clash = clash.exclude(pk=self.instance.pk)
        if flow and slug and clash.exists():
            raise serializers.ValidationError({"slug": [f"Flow {flow.name} already has a schedule '{slug}'."]})
        return attrs

    def _current_values(self):
        if not self.instance:
            return {}
        return {f.name: getattr(self.instance, f.name) for f in Schedule._meta.concrete_fields if f.name != "id"}


class StateChangeSerializer(serializers.ModelSerializer):
    user = serializers.StringRelatedField()
    agent = serializers.StringRelatedField()

    class Meta:
        model = StateChange
        fields = ["from_state", "to_state", "message", "actor", "user", "agent", "timestamp"]


class FlowRunSerializer(serializers.ModelSerializer):
    flow = serializers.SlugRelatedField(slug_field="name", read_only=True)
    work_queue = serializers.SlugRelatedField(slug_field="name", read_only=True)
    agent = serializers.SlugRelatedField(slug_field="name", read_only=True)
    created_by = serializers.StringRelatedField()

    class Meta:
        model = FlowRun
        fields = [
            "id", "name", "flow", "flow_version", "schedule", "schedule_slug", "parameters", "state",
            "state_message", "state_changed", "scheduled_start", "auto_scheduled", "created_by", "work_queue",
            "agent", "start_time", "end_time", "last_heartbeat", "run_count", "lazarus_count",
            "idempotency_key", "created",
        ]
        read_only_fields = fields


class FlowRunDetailSerializer(FlowRunSerializer):
    history = StateChangeSerializer(many=True, read_only=True)

    class Meta(FlowRunSerializer.Meta):
        fields = FlowRunSerializer.Meta.fields + ["history"]
        read_only_fields = fields
