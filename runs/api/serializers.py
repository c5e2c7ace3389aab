"""Serializers of the public API."""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers
from timezone_field.rest_framework import TimeZoneSerializerField

from runs import hot_sql
from runs.models import Flow, FlowRun, FlowVersion, Schedule, StateChange, WorkQueue
from runs.schedules import ScheduleComputeError, validate_schedule

from .schema import EXAMPLE_RUN_ID, request_example, response_example


VERSION = {"id": 12, "version": "1.4.2", "entrypoint": "etl.flows:nightly", "parameters": {"day": "yesterday"},
           "job_env": {"TZ": "UTC"}, "secrets": ["DB_PASSWORD"], "is_latest": True, "archived": False, "created": "2026-11-20T09:30:00Z"}


@extend_schema_serializer(examples=[response_example("The latest version", VERSION)])
class FlowVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = FlowVersion
        fields = ["id", "version", "entrypoint", "parameters", "job_env", "secrets", "is_latest", "archived", "created"]


@extend_schema_serializer(examples=[
    response_example("A flow", {"id": 4, "name": "nightly-etl", "description": "Loads yesterday's orders",
                                "created": "2026-11-01T08:00:00Z", "latest_version": VERSION}),
    request_example("Describe it", {"description": "Loads yesterday's orders into the warehouse"}),
])
class FlowSerializer(serializers.ModelSerializer):
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Flow
        fields = ["id", "name", "description", "created", "latest_version"]

    @extend_schema_field(FlowVersionSerializer(allow_null=True))
    def get_latest_version(self, flow):
        latest = [v for v in flow.versions.all() if v.is_latest]
        return FlowVersionSerializer(latest[0]).data if latest else None


def environment_field(help_text):
    """Environment variables as the API takes them: names to strings (numbers are turned into text)."""
    return serializers.DictField(child=serializers.CharField(max_length=10000, allow_blank=True), required=False,
                                 help_text=help_text)


class WorkspaceRelatedField(serializers.SlugRelatedField):
    """A related object named within the request's workspace; another workspace's is 'not found'."""

    def get_queryset(self):
        request = self.context["request"]
        return super().get_queryset().filter(**{self.workspace_lookup: request.workspace})

    def __init__(self, *args, workspace_lookup="workspace", **kwargs):
        self.workspace_lookup = workspace_lookup
        super().__init__(*args, **kwargs)


class VersionField(WorkspaceRelatedField):
    """A flow version of the request's workspace, by id."""

    default_error_messages = {"does_not_exist": "No version {value} in this workspace.",
                              "invalid": "Give the id of a version (a whole number)."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, str)):
            self.fail("invalid")
        try:
            number = int(data)
        except ValueError:
            self.fail("invalid")
        if not 0 < number < 2**63:  # no such id, and the database would refuse to compare it
            self.fail("does_not_exist", slug_name="id", value=data)
        return super().to_internal_value(number)


def version_field(**kwargs):
    return VersionField(slug_field="id", queryset=FlowVersion.objects.select_related("flow"),
                        workspace_lookup="flow__workspace", **kwargs)


class ZoneField(TimeZoneSerializerField):
    """An IANA time zone name. zoneinfo refuses keys such as 'Europe/' or '../x' with a ValueError
    that django-timezone-field does not catch; here every refusal is the field's 400."""

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except (ValueError, OSError):
            self.fail("invalid")


SCHEDULE = {
    "id": 3, "flow": "nightly-etl", "slug": "nightly", "description": "Every night at 02:00, Berlin time",
    "kind": "cron", "interval_seconds": None, "anchor": None, "cron": "0 2 * * *", "rrule": "", "calendar": {},
    "timezone": "Europe/Berlin", "dst_nonexistent": "shift", "dst_ambiguous": "once", "status": "ACTIVE",
    "parameters": {"full": False}, "work_queue": "default", "flow_version": None, "catchup_max_runs": 0,
    "only_newest_when_late": True,
    "created": "2026-11-01T08:00:00Z", "updated": "2026-11-01T08:00:00Z",
    "description_text": "At 02:00 (Europe/Berlin)",
    "next_runs": [{"utc": "2026-11-24T01:00:00Z", "local": "2026-11-24T02:00:00+01:00"},
                  {"utc": "2026-11-25T01:00:00Z", "local": "2026-11-25T02:00:00+01:00"}],
    "next_runs_error": None,
}


@extend_schema_serializer(examples=[
    response_example("A cron schedule", SCHEDULE),
    request_example("Nightly, Berlin time", {"flow": "nightly-etl", "slug": "nightly", "kind": "cron",
                                             "cron": "0 2 * * *", "timezone": "Europe/Berlin",
                                             "parameters": {"full": False}, "only_newest_when_late": True}),
    request_example("Every 15 minutes", {"flow": "sync", "slug": "quarter-hourly", "kind": "interval",
                                         "interval_seconds": 900, "anchor": "2026-01-01T00:00:00Z"}),
    request_example("Last business day of each quarter", {
        "flow": "close-books", "slug": "quarter-end", "kind": "calendar", "timezone": "America/New_York",
        "calendar": {"base": {"rule": "last_business_day_of_quarter"},
                     "holidays": {"country": "US", "subdivision": "NY"}, "times": ["18:00"]}}),
])
class ScheduleSerializer(serializers.ModelSerializer):
    flow = WorkspaceRelatedField(slug_field="name", queryset=Flow.objects.all())
    work_queue = WorkspaceRelatedField(slug_field="name", queryset=WorkQueue.objects.all(), required=False,
                                       allow_null=True)
    timezone = ZoneField(use_pytz=False, required=False, help_text="IANA zone, e.g. Europe/Berlin; default UTC.")
    parameters = serializers.DictField(required=False, help_text="Parameters of its runs, over the version's defaults.")
    flow_version = version_field(
        required=False, allow_null=True,
        help_text="Id of the version its runs run (pinned; any version of its flow, archived too); null: each run "
                  "runs the flow's latest version when an agent claims it.")
    description_text = serializers.SerializerMethodField(help_text="When it fires, in words.")
    next_runs = serializers.SerializerMethodField(
        help_text="On a single schedule: its next 10 fire times (UTC and local), computed from its definition; "
                  "empty when they cannot be computed (see next_runs_error).")
    next_runs_error = serializers.SerializerMethodField(
        help_text="On a single schedule whose fire times cannot be computed (a rule saved before it was "
                  "validated, or too expensive to evaluate): why, naming the field. Otherwise null.")

    class Meta:
        model = Schedule
        fields = [
            "id", "flow", "slug", "description", "kind", "interval_seconds", "anchor", "cron", "rrule",
            "calendar", "timezone", "dst_nonexistent", "dst_ambiguous", "status", "parameters", "work_queue",
            "flow_version", "catchup_max_runs", "only_newest_when_late", "created", "updated", "description_text",
            "next_runs", "next_runs_error",
        ]
        read_only_fields = ["status", "created", "updated"]
        # Uniqueness of (flow, slug) is checked in validate(), so the error names the slug field.
        validators = []

    def get_description_text(self, schedule) -> str:
        return schedule.describe()

    def get_next_runs(self, schedule) -> list[dict] | None:
        return self._next_runs(schedule)[0]

    def get_next_runs_error(self, schedule) -> str | None:
        return self._next_runs(schedule)[1]

    def _next_runs(self, schedule):
        """(next runs, why there are none), computed once per schedule; (None, None) on a list."""
        if not self.context.get("with_next_runs"):
            return None, None
        cache = self.__dict__.setdefault("_next_runs_cache", {})
        if schedule.pk not in cache:
            try:
                cache[schedule.pk] = self.fire_times_data(schedule, timezone.now(), 10), None
            except ScheduleComputeError as exc:  # a bad stored rule: the page still answers, saying why
                cache[schedule.pk] = [], "; ".join(f"{field}: {' '.join(problems)}"
                                                   for field, problems in exc.message_dict.items())
        return cache[schedule.pk]

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
        if "flow_version" in attrs or "flow" in attrs:
            try:
                instance.validate_pin()
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


@extend_schema_serializer(examples=[request_example("Pin to version 11", {"flow_version": 11})])
class PinRequestSerializer(serializers.Serializer):
    flow_version = version_field(help_text="Id of a version of the schedule's flow.")


class FireTimeSerializer(serializers.Serializer):
    utc = serializers.DateTimeField()
    local = serializers.DateTimeField(help_text="The same instant in the schedule's time zone.")


@extend_schema_serializer(examples=[
    request_example("Weekdays at 09:30 in Tokyo, next 3", {"kind": "cron", "cron": "30 9 * * 1-5",
                                                            "timezone": "Asia/Tokyo", "count": 3}),
])
class SchedulePreviewRequestSerializer(ScheduleSerializer):
    """A schedule's definition, without flow or slug, and how many fire times to show."""

    count = serializers.IntegerField(required=False, min_value=1, max_value=100, default=10,
                                     help_text="How many fire times (1–100).")

    class Meta(ScheduleSerializer.Meta):
        fields = ["kind", "interval_seconds", "anchor", "cron", "rrule", "calendar", "timezone", "dst_nonexistent",
                  "dst_ambiguous", "count"]

    def validate(self, attrs):
        count = attrs.pop("count", 10)
        return {**super().validate(attrs), "count": count}


@extend_schema_serializer(examples=[response_example("Next 3", {
    "description_text": "At 09:30, Monday through Friday (Asia/Tokyo)", "timezone": "Asia/Tokyo",
    "next_runs": [{"utc": "2026-11-24T00:30:00Z", "local": "2026-11-24T09:30:00+09:00"},
                  {"utc": "2026-11-25T00:30:00Z", "local": "2026-11-25T09:30:00+09:00"},
                  {"utc": "2026-11-26T00:30:00Z", "local": "2026-11-26T09:30:00+09:00"}]})])
class SchedulePreviewSerializer(serializers.Serializer):
    description_text = serializers.CharField()
    timezone = serializers.CharField()
    next_runs = FireTimeSerializer(many=True)


class RunsKeptSerializer(serializers.Serializer):
    running = serializers.IntegerField(help_text="Started runs (SUBMITTED, RUNNING, PAUSED, CANCELLING): they finish.")
    manual = serializers.IntegerField(help_text="Runs made by hand for this schedule, still waiting: they stay.")
    due = serializers.IntegerField(help_text="Auto-scheduled runs already due or LATE when it paused: they stay.")


@extend_schema_serializer(examples=[response_example("Paused", {**SCHEDULE, "status": "PAUSED", "runs_deleted": 10,
                                                                  "runs_kept": {"running": 1, "manual": 0, "due": 0}})])
class PausedScheduleSerializer(ScheduleSerializer):
    runs_deleted = serializers.IntegerField(read_only=True, help_text="Future auto-scheduled runs deleted.")
    runs_kept = RunsKeptSerializer(read_only=True, help_text="The schedule's runs the pause left alone.")

    class Meta(ScheduleSerializer.Meta):
        fields = ScheduleSerializer.Meta.fields + ["runs_deleted", "runs_kept"]


@extend_schema_serializer(examples=[response_example("Resumed", {**SCHEDULE, "runs_created": 10})])
class ResumedScheduleSerializer(ScheduleSerializer):
    runs_created = serializers.IntegerField(read_only=True, help_text="Future runs created by the resume.")

    class Meta(ScheduleSerializer.Meta):
        fields = ScheduleSerializer.Meta.fields + ["runs_created"]


_drf_time = serializers.DateTimeField().to_representation


def _time(value, zone):
    """A time as DRF's DateTimeField shows it (ISO 8601 in the current `zone`, UTC as Z), for the
    answers built as plain dicts below; what is not an aware datetime goes to DRF's own."""
    if value is None:
        return None
    if getattr(value, "tzinfo", None) is None:
        return _drf_time(value)
    value = value.astimezone(zone).isoformat()
    return value[:-6] + "Z" if value.endswith("+00:00") else value


def _shown(obj, attr=None):
    """What an answer shows of a related object: its `attr`, or str() of it; None for none."""
    if obj is None:
        return None
    return str(obj) if attr is None else getattr(obj, attr)


def state_change_data(change):
    """One history row as the API shows it: StateChangeSerializer's fields, built directly (a state
    change's answer renders its history from SQL rows, runs/hot_sql.py). `change`: a mapping of
    from_state, to_state, message, actor, timestamp, and user / agent as shown (their str(), or None)."""
    return {"from_state": str(change["from_state"]), "to_state": str(change["to_state"]),
            "message": str(change["message"]), "actor": str(change["actor"]), "user": change["user"],
            "agent": change["agent"], "timestamp": _time(change["timestamp"], timezone.get_current_timezone())}


class StateChangeSerializer(serializers.ModelSerializer):
    user = serializers.StringRelatedField(allow_null=True, help_text="The person, when a person did it.")
    agent = serializers.StringRelatedField(allow_null=True, help_text="The agent, when an agent reported it.")

    class Meta:
        model = StateChange
        fields = ["from_state", "to_state", "message", "actor", "user", "agent", "timestamp"]

    def to_representation(self, change):
        return state_change_data({"from_state": change.from_state, "to_state": change.to_state,
                                  "message": change.message, "actor": change.actor, "user": _shown(change.user),
                                  "agent": _shown(change.agent), "timestamp": change.timestamp})


FLOW_RUN = {
    "id": EXAMPLE_RUN_ID, "name": "nightly-etl-2026-11-23", "flow": "nightly-etl", "flow_version": 12, "schedule": 3,
    "schedule_slug": "nightly", "parameters": {"full": False}, "state": "COMPLETED", "state_message": "",
    "state_changed": "2026-11-23T01:07:41Z", "scheduled_start": "2026-11-23T01:00:00Z", "slot": "2026-11-23T01:00:00Z",
    "auto_scheduled": True, "created_by": None, "created_by_key": None, "work_queue": "default",
    "agent": "build-host-1",
    "start_time": "2026-11-23T01:00:04Z", "end_time": "2026-11-23T01:07:41Z", "last_heartbeat": "2026-11-23T01:07:30Z", "run_count": 1,
    "lazarus_count": 0, "idempotency_key": None, "created": "2026-11-22T01:00:00Z",
}
HISTORY = [
    {"from_state": "SCHEDULED", "to_state": "SUBMITTED", "message": "", "actor": "agent", "user": None,
     "agent": "build-host-1", "timestamp": "2026-11-23T01:00:02Z"},
    {"from_state": "SUBMITTED", "to_state": "RUNNING", "message": "", "actor": "agent", "user": None,
     "agent": "build-host-1", "timestamp": "2026-11-23T01:00:04Z"},
    {"from_state": "RUNNING", "to_state": "COMPLETED", "message": "Loaded 1,204 rows", "actor": "agent",
     "user": None, "agent": "build-host-1", "timestamp": "2026-11-23T01:07:41Z"},
]


# What a run's answer names of its related objects (those runs/hot_sql.py reads with a run), and how:
# by name, or (a person) as str().
RUN_NAMES = {name: None if FlowRun._meta.get_field(name).related_model is get_user_model() else "name"
             for name in hot_sql.RUN_NAMES}


def run_names(run, only=RUN_NAMES):
    """flow_run_data's `names` (those in `only`) from the run's relations, loading those not loaded."""
    return {name: _shown(getattr(run, name), RUN_NAMES[name]) for name in only}


def flow_run_data(run, names=None):
    """A run as the API shows it: FlowRunSerializer's fields in their order, built directly (DRF's
    field by field rendering was a fifth of a state change's and of creating a run's CPU). Every
    answer showing a run (create, list, detail, a state change) goes through here, so they cannot
    drift apart. `names`: run_names(run) (the default: the run's loaded relations), or the same
    names read with the run in SQL (runs/hot_sql.py)."""
    if names is None:
        names = run_names(run)
    zone = timezone.get_current_timezone()
    return {
        "id": str(run.pk), "name": str(run.name), "flow": names["flow"], "flow_version": run.flow_version_id,
        "schedule": run.schedule_id, "schedule_slug": str(run.schedule_slug), "parameters": run.parameters,
        "state": str(run.state), "state_message": str(run.state_message),
        "state_changed": _time(run.state_changed, zone), "scheduled_start": _time(run.scheduled_start, zone),
        "slot": _time(run.slot, zone), "auto_scheduled": bool(run.auto_scheduled), "created_by": names["created_by"],
        "created_by_key": names["created_by_key"], "work_queue": names["work_queue"], "agent": names["agent"],
        "start_time": _time(run.start_time, zone), "end_time": _time(run.end_time, zone),
        "last_heartbeat": _time(run.last_heartbeat, zone), "run_count": int(run.run_count),
        "lazarus_count": int(run.lazarus_count),
        "idempotency_key": None if run.idempotency_key is None else str(run.idempotency_key),
        "created": _time(run.created, zone),
    }


@extend_schema_serializer(examples=[response_example("A finished scheduled run", FLOW_RUN)])
class FlowRunSerializer(serializers.ModelSerializer):
    flow = serializers.SlugRelatedField(slug_field="name", read_only=True)
    work_queue = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    agent = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True,
                                         help_text="The agent that claimed it; null before a claim.")
    created_by = serializers.StringRelatedField(allow_null=True,
                                                help_text="The person who made a manual run; null for the scheduler's.")
    created_by_key = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True,
        help_text="The name of the API key a manual run was made with; null for the scheduler's and the dashboard's.")
    schedule_slug = serializers.CharField(read_only=True, help_text="The schedule's slug; empty for a manual run.")

    class Meta:
        model = FlowRun
        fields = [
            "id", "name", "flow", "flow_version", "schedule", "schedule_slug", "parameters", "state",
            "state_message", "state_changed", "scheduled_start", "slot", "auto_scheduled", "created_by",
            "created_by_key", "work_queue", "agent", "start_time", "end_time", "last_heartbeat", "run_count",
            "lazarus_count", "idempotency_key", "created",
        ]
        read_only_fields = fields

    def to_representation(self, run):
        return flow_run_data(run, run_names(run))


@extend_schema_serializer(examples=[response_example("A finished run with its history",
                                                     {**FLOW_RUN, "history": HISTORY})])
class FlowRunDetailSerializer(FlowRunSerializer):
    history = StateChangeSerializer(many=True, read_only=True)

    class Meta(FlowRunSerializer.Meta):
        fields = FlowRunSerializer.Meta.fields + ["history"]
        read_only_fields = fields

    def to_representation(self, run):
        history = StateChangeSerializer(run.history.all(), many=True).data
        return {**super().to_representation(run), "history": history}
