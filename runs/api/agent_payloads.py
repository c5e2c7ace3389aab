"""What agents send to the server and what they get back, with the examples the schema shows.

The views in agents.py validate input with these serializers; the answers are built as plain
dicts on the hot paths (claim, state reports) and these serializers describe them. The fuzzing
test checks every answer against this description.
"""

import functools
import uuid

from django.conf import settings
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import fields as serializers_fields
from rest_framework import serializers
from rest_framework.utils import html

from runs.models import AgentStatus, LogLevel, State

from .schema import EXAMPLE_RUN_ID as RUN_ID
from .schema import EXAMPLE_TASK_RUN_ID as TASK_RUN_ID
from .schema import request_example, response_example


# What one agent may declare when it registers. Each queue named is created when missing, so the
# count is bounded like any other write; labels are short key/value tags shown with the agent.
REGISTER_MAX_QUEUES = 100
REGISTER_MAX_LABELS = 50
LABEL_KEY_MAX_CHARS = 100
LABEL_VALUE_MAX_CHARS = 500


def _bound(most):
    return most() if callable(most) else most


class BoundedListField(serializers.ListField):
    """A list of at most `most` items (a number, or a function read on each request), counted before
    any item is validated: a long list of tiny items is refused for the price of len()."""

    default_error_messages = {"too_many": "At most {most} items."}

    def __init__(self, *, most, **kwargs):
        self.most = most
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if html.is_html_input(data):
            data = html.parse_html_list(data, default=[])
        if isinstance(data, (list, tuple)) and len(data) > _bound(self.most):
            self.fail("too_many", most=_bound(self.most))
        return super().to_internal_value(data)

    def run_child_validation(self, data):
        # With no child field given, DRF's placeholder child only refuses null items; a list with no
        # null is taken as it is, without a field call per item (a 500-line log batch: ~1.5 ms).
        if type(self.child) is serializers_fields._UnvalidatedField and None not in data:
            return list(data)
        return super().run_child_validation(data)


class BoundedDictField(serializers.DictField):
    """A JSON object of at most `most` keys, counted before any value is validated."""

    default_error_messages = {"too_many": "At most {most} keys."}

    def __init__(self, *, most, **kwargs):
        self.most = most
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, dict) and len(data) > _bound(self.most):
            self.fail("too_many", most=_bound(self.most))
        return super().to_internal_value(data)


@extend_schema_serializer(examples=[request_example("An agent on two queues", {
    "name": "build-host-1", "queues": ["default", "gpu"], "labels": {"os": "linux"}, "version": "0.1.0",
    "heartbeat_interval": 30})])
class RegisterInput(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="Unique in the workspace; registering again refreshes it.")
    queues = BoundedListField(child=serializers.CharField(max_length=100), allow_empty=False,
                              most=REGISTER_MAX_QUEUES,
                              help_text=f"Work queues it takes runs from (at most {REGISTER_MAX_QUEUES}); missing "
                                        f"ones are created.")
    labels = BoundedDictField(required=False, default=dict, most=REGISTER_MAX_LABELS, help_text=(
        f"Tags shown with the agent: at most {REGISTER_MAX_LABELS}, keys of at most {LABEL_KEY_MAX_CHARS} "
        f"characters, values strings (at most {LABEL_VALUE_MAX_CHARS} characters), numbers, booleans or null."))
    version = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
    heartbeat_interval = serializers.IntegerField(min_value=1, max_value=86400, required=False, default=30,
                                                  help_text="Seconds between its own heartbeats.")

    def validate_labels(self, labels):
        for key, value in labels.items():
            if len(key) > LABEL_KEY_MAX_CHARS:
                raise serializers.ValidationError(f"{key[:40]!r}…: a key may have at most {LABEL_KEY_MAX_CHARS} "
                                                  f"characters.")
            if isinstance(value, (dict, list)):
                raise serializers.ValidationError(f"{key!r}: a value is a string, number, boolean or null, not "
                                                  f"{'an object' if isinstance(value, dict) else 'a list'}.")
            if isinstance(value, str) and len(value) > LABEL_VALUE_MAX_CHARS:
                raise serializers.ValidationError(f"{key!r}: a value may have at most {LABEL_VALUE_MAX_CHARS} "
                                                  f"characters.")
        return labels


@extend_schema_serializer(examples=[response_example("Registered", {
    "id": 7, "name": "build-host-1", "queues": ["default", "gpu"], "task_result_max_bytes": 1048576,
    "log_batch_max_lines": 1000, "claim_max_runs": 200, "handback_delay_seconds": 30.0})])
class RegisteredAgentSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="Send it as agent_id in heartbeats and claims.")
    name = serializers.CharField()
    queues = serializers.ListField(child=serializers.CharField())
    task_result_max_bytes = serializers.IntegerField(
        help_text="The largest task result (JSON, in bytes) the server keeps: ORCHESTRATOR_TASK_RESULT_MAX_BYTES.")
    log_batch_max_lines = serializers.IntegerField(
        help_text="The most lines one log batch may carry: ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES.")
    claim_max_runs = serializers.IntegerField(
        help_text="The most runs one claim may ask for (max_runs): ORCHESTRATOR_AGENT_CLAIM_MAX_RUNS.")
    handback_delay_seconds = serializers.FloatField(
        help_text="A run handed back (state SCHEDULED) is due again this long after the report: "
                  "ORCHESTRATOR_HANDBACK_DELAY_SECONDS. Runners finish a hand-back within half of it.")


@extend_schema_serializer(examples=[request_example("Alive", {"agent_id": 7}),
                                    request_example("Shutting down", {"agent_id": 7, "status": "OFFLINE"})])
class AgentHeartbeatInput(serializers.Serializer):
    agent_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=AgentStatus.choices, required=False, default=AgentStatus.ONLINE)


CANCELLING_HELP = "Ids of this agent's runs that are CANCELLING: the agent ends their processes and reports CANCELLED."


@extend_schema_serializer(examples=[response_example("One run to stop", {"cancelling": [RUN_ID]})])
class AgentHeartbeatAnswerSerializer(serializers.Serializer):
    cancelling = serializers.ListField(child=serializers.UUIDField(), help_text=CANCELLING_HELP)


@extend_schema_serializer(examples=[request_example("Up to 4 runs", {"agent_id": 7, "max_runs": 4})])
class ClaimInput(serializers.Serializer):
    agent_id = serializers.IntegerField()
    max_runs = serializers.IntegerField(min_value=1, required=False, default=1,
                                        help_text="At most ORCHESTRATOR_AGENT_CLAIM_MAX_RUNS (default 200).")

    def validate_max_runs(self, value):
        cap = settings.ORCHESTRATOR["AGENT_CLAIM_MAX_RUNS"]
        if value > cap:
            raise serializers.ValidationError(f"At most {cap} runs per claim.")
        return value


def plain_claim(data):
    """ClaimInput's validated data for a claim's usual body ({"agent_id": an int, "max_runs": an int
    from 1 to the cap, or left out}), read without the serializer: building one (a deep copy of its
    fields) was a fifth of a quiet poll's CPU. None for any other body: ClaimInput judges it and
    answers its 400s."""
    if type(data) is not dict or not data.keys() <= {"agent_id", "max_runs"}:
        return None
    agent_id, max_runs = data.get("agent_id"), data.get("max_runs", 1)
    if type(agent_id) is int and type(max_runs) is int and 1 <= max_runs <= settings.ORCHESTRATOR["AGENT_CLAIM_MAX_RUNS"]:
        return {"agent_id": agent_id, "max_runs": max_runs}
    return None


class QuotaReachedSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="quota_reached")
    message = serializers.CharField(help_text="What a person reads: the limit, the count, the reset, who raises it.")
    limit = serializers.IntegerField(help_text="The workspace's monthly_task_run_quota.")
    used = serializers.IntegerField(help_text="Task runs that COMPLETED this month (UTC).")
    month = serializers.CharField(help_text="YYYY-MM, UTC.")
    resets_at = serializers.DateTimeField(help_text="When the month ends (UTC) and claims resume.")
    raised_by = serializers.CharField(help_text="Who may raise the quota.")


class ClaimedRunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    flow = serializers.CharField(help_text="The flow's name.")
    state = serializers.ChoiceField(choices=State.choices)
    entrypoint = serializers.CharField(allow_null=True, help_text="module:function of the flow version.")
    parameters = serializers.DictField(help_text="The version's defaults with the run's own on top.")
    env = serializers.DictField(child=serializers.CharField(), help_text="The queue's then the version's job_env.")
    work_queue = serializers.CharField(allow_null=True)
    scheduled_start = serializers.DateTimeField()
    token = serializers.CharField(help_text=(
        "The run's report token: every report about the run (state, heartbeats, task runs, logs) authenticates "
        "with it. Valid for this attempt only: once the run is claimed again or rescheduled, reports with it "
        "answer 409 `superseded`."))
    secrets = serializers.DictField(child=serializers.CharField(), help_text=(
        "Values of the workspace secrets the flow version names, as environment variables of the run; the "
        "agent redacts them from the run's logs. Only a claim's answer ever holds them."))
    missing_secrets = serializers.ListField(child=serializers.CharField(), help_text=(
        "Secrets the version names that the workspace does not have: the agent fails the run, naming them."))


@extend_schema_serializer(examples=[response_example("One run claimed", {"runs": [{
    "id": RUN_ID, "name": "nightly-etl-2026-11-23", "flow": "nightly-etl", "state": "SUBMITTED",
    "entrypoint": "etl.flows:nightly", "parameters": {"day": "2026-11-22"}, "env": {"TZ": "UTC"},
    "work_queue": "default", "scheduled_start": "2026-11-23T02:00:00+00:00",
    "token": "orr_3f1c9d2e8a7b4c5d9e0f1a2b3c4d5e6f_7_2_" + "5c" * 32, "secrets": {"DB_PASSWORD": "…"},
    "missing_secrets": []}], "cancelling": [], "quota": None}),
    response_example("The monthly quota is used up", {"runs": [], "cancelling": [], "quota": {
        "code": "quota_reached", "limit": 5000, "used": 5000, "month": "2026-12",
        "resets_at": "2027-01-01T00:00:00Z",
        "raised_by": "a workspace admin (monthly_task_run_quota in the workspace's settings)",
        "message": "Workspace acme/prod has used its monthly task-run quota: 5,000 of 5,000 successful task runs "
                   "in December 2026 (UTC). Agents claim no new runs until the quota resets at 2027-01-01 00:00 "
                   "UTC or a workspace admin raises it (monthly_task_run_quota in the workspace's settings). Due "
                   "runs wait, SCHEDULED or LATE; runs already claimed finish."}})])
class ClaimAnswerSerializer(serializers.Serializer):
    runs = ClaimedRunSerializer(many=True, help_text=(
        "Now SUBMITTED and the agent's; empty when nothing is due. Runs this agent claimed earlier and has "
        "not started (still SUBMITTED) come again, so a claim whose answer was lost loses nothing: the agent "
        "skips those it already runs."))
    cancelling = serializers.ListField(child=serializers.UUIDField(), help_text=CANCELLING_HELP)
    quota = QuotaReachedSerializer(allow_null=True, help_text=(
        "Null while the workspace may claim. Set when it has used its monthly task-run quota: no new run was "
        "claimed (due runs wait, SCHEDULED or LATE), runs claimed earlier and not started still come; the "
        "agent keeps polling and claims again once the month ends or an admin raises the quota."))


@extend_schema_serializer(examples=[
    request_example("Started", {"state": "RUNNING", "heartbeat_interval": 30}),
    request_example("Finished", {"state": "COMPLETED", "message": "Loaded 1,204 rows", "expected_state": "RUNNING"}),
])
class StateInput(serializers.Serializer):
    state = serializers.ChoiceField(choices=State.choices)
    message = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)
    expected_state = serializers.ChoiceField(
        choices=State.choices, required=False,
        help_text="Refuse (409) unless the run is still in this state: guards against stale reports.")
    heartbeat_interval = serializers.IntegerField(
        min_value=1, max_value=86400, required=False, allow_null=True,
        help_text="With RUNNING: seconds between the run's heartbeats; null: it sends none.")


@extend_schema_serializer(examples=[
    request_example("Completed with its result", {"state": "COMPLETED", "result": {"rows": 1204}}),
    request_example("Failed", {"state": "FAILED", "message": "ValueError: no such table"}),
])
class TaskRunStateInput(StateInput):
    result = serializers.JSONField(
        required=False, allow_null=True,
        help_text="With COMPLETED: the task's return value as JSON. Kept when at most "
                  "ORCHESTRATOR_TASK_RESULT_MAX_BYTES, so a later attempt of the flow run takes it instead of "
                  "running the task again; larger results are not kept.")


@extend_schema_serializer(examples=[response_example("Alive", {"state": "RUNNING"}),
                                    response_example("Asked to stop", {"state": "CANCELLING"})])
class FlowRunHeartbeatAnswerSerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=State.choices, help_text="The run's state now: CANCELLING (or CANCELLED) tells its process to stop.")


@extend_schema_serializer(examples=[response_example("Now running", {
    "id": RUN_ID, "state": "RUNNING", "state_message": ""})])
class ReportedFlowRunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    state = serializers.ChoiceField(choices=State.choices)
    state_message = serializers.CharField(allow_blank=True)


@extend_schema_serializer(examples=[request_example("A task call", {
    "task_key": "extract", "dynamic_key": "0", "name": "extract", "max_retries": 2})])
class TaskRunInput(serializers.Serializer):
    task_key = serializers.CharField(max_length=200, help_text="Which task of the flow.")
    dynamic_key = serializers.CharField(max_length=200, required=False, default="0",
                                        help_text="Which call of that task within the run (0, 1, …).")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    max_retries = serializers.IntegerField(min_value=0, max_value=1000, required=False, default=0)


class TaskResultSerializer(serializers.Serializer):
    value = serializers.JSONField(help_text="What the task returned.")


@extend_schema_serializer(examples=[
    response_example("A task run", {"id": TASK_RUN_ID, "task_key": "extract", "dynamic_key": "0",
                                    "state": "SCHEDULED", "run_count": 0, "result": None}),
    response_example("Completed in an earlier attempt", {
        "id": TASK_RUN_ID, "task_key": "extract", "dynamic_key": "0", "state": "COMPLETED", "run_count": 1,
        "result": {"value": {"rows": 1204}}}),
])
class ReportedTaskRunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    task_key = serializers.CharField()
    dynamic_key = serializers.CharField()
    state = serializers.ChoiceField(choices=State.choices)
    run_count = serializers.IntegerField()
    result = TaskResultSerializer(allow_null=True, help_text=(
        "Set once the task run COMPLETED with a result the server kept. Asked for again by a later attempt, a "
        "COMPLETED task run with a result comes back as it is: its result stands and the task is not run again."))


class LogLine(serializers.Serializer):
    flow_run_id = serializers.UUIDField()
    task_run_id = serializers.UUIDField(required=False, allow_null=True)
    level = serializers.ChoiceField(choices=LogLevel.choices, required=False, default=LogLevel.INFO)
    message = serializers.CharField(allow_blank=True, trim_whitespace=False, help_text=(
        "At most ORCHESTRATOR_AGENT_LOG_LINE_MAX_CHARS characters (default 32,768; a longer line is refused "
        "alone, naming `message`)."))
    timestamp = serializers.DateTimeField(required=False, help_text="Default: when the server accepts it.")

    def validate_message(self, message):
        most = settings.ORCHESTRATOR["AGENT_LOG_LINE_MAX_CHARS"]
        if len(message) > most:
            raise serializers.ValidationError(f"At most {most} characters (ORCHESTRATOR_AGENT_LOG_LINE_MAX_CHARS); "
                                              f"this line has {len(message)}: split it.")
        return message


_LEVELS = frozenset(LogLevel.values)


@functools.lru_cache(maxsize=1024)
def _uuid(text):
    """uuid.UUID(text), remembered: a batch names its run (and a few task runs) on every line."""
    return uuid.UUID(text)


def valid_log_line(raw, max_chars=None):
    """(validated data, None) or (None, {field: [messages]}) for one line of a log batch.

    The usual line (string ids, an int level, a string message, an ISO 8601 time with its offset) is
    judged here in a few microseconds; LogLine, a DRF serializer, cost ~0.3 ms a line, most of a
    batch's CPU at thousands of lines a second. Anything else goes to LogLine, so the values taken and
    the errors given are LogLine's own. A batch passes `max_chars` (the line limit) read once.
    """
    if max_chars is None:
        max_chars = settings.ORCHESTRATOR["AGENT_LOG_LINE_MAX_CHARS"]
    if type(raw) is dict:
        try:
            flow_run_id = _uuid(raw["flow_run_id"])
            task = raw.get("task_run_id")
            task_run_id = None if task is None else _uuid(task)
            level = raw.get("level", LogLevel.INFO)
            message = raw["message"]
            stamp = raw.get("timestamp")
            moment = None if stamp is None else parse_datetime(stamp)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
        else:
            if (type(level) is int and level in _LEVELS and type(message) is str and "\x00" not in message
                    and len(message) <= max_chars
                    and (stamp is None or (moment is not None and moment.tzinfo is not None))):
                data = {"flow_run_id": flow_run_id, "level": level, "message": message}
                if "task_run_id" in raw:
                    data["task_run_id"] = task_run_id
                if moment is not None:
                    data["timestamp"] = moment
                return data, None
    line = LogLine(data=raw)
    if line.is_valid():
        return line.validated_data, None
    return None, line.errors if isinstance(line.errors, dict) else {"input": line.errors}


@extend_schema_serializer(examples=[request_example("Two lines", {"logs": [
    {"flow_run_id": RUN_ID, "level": 20, "message": "Extracting 2026-11-22", "timestamp": "2026-11-23T02:00:01Z"},
    {"flow_run_id": RUN_ID, "task_run_id": TASK_RUN_ID, "level": 30, "message": "Slow source; retrying"},
]})])
class LogBatchInput(serializers.Serializer):
    logs = LogLine(many=True, allow_empty=False, help_text=(
        "At most ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES lines (default 1000; more is a 400, before any line is "
        "judged). Each line is judged on its own: good lines are stored even when others are refused (see "
        "`refused`)."))


def log_batch_max_lines():
    """The most lines one log batch may carry (ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES)."""
    return settings.ORCHESTRATOR["AGENT_LOG_BATCH_MAX_LINES"]


class LogBatchEnvelope(serializers.Serializer):
    """The batch's outer shape; LogBatchView then validates each line with LogLine on its own."""

    logs = BoundedListField(allow_empty=False, most=log_batch_max_lines, error_messages={
        "too_many": "At most {most} lines per batch (ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES); send smaller batches."})


class RefusedLogLineSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the line in the batch, from 0.")
    reason = serializers.CharField()


@extend_schema_serializer(examples=[
    response_example("Stored", {"stored": 2, "refused": []}),
    response_example("One line refused", {"stored": 1, "refused": [
        {"index": 1, "reason": "flow_run_id: no such flow run in this workspace."}]}),
])
class StoredLogsSerializer(serializers.Serializer):
    stored = serializers.IntegerField()
    refused = RefusedLogLineSerializer(many=True, help_text=(
        "Lines not stored, and why; the others are. A batch with no line worth storing is a 400 (malformed "
        "lines) or a 404 (lines of runs not in this workspace)."))


@extend_schema_serializer(examples=[response_example("Fine", {"ok": True})])
class AgentPingSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
