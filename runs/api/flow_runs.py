"""Flow runs: create a manual run, list with filters, detail with history, set state, cancel, retry."""

import uuid

from django.db import IntegrityError
from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import exceptions, mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from runs import hot_sql
from runs.models import TERMINAL_STATES, Actor, ApiKey, Flow, FlowRun, Role, State, WorkQueue
from runs.scheduling import DEFAULT_QUEUE, LATEST, create_manual_run
from runs.states import STATE_VALUES, IllegalTransition, NotMoved, set_flow_run_state, set_listed_flow_run_state

from .filtersets import FilterBackend, FlowRunFilter
from .pagination import KeysetPagination
from .errors import error_body
from .parsers import UNSTORABLE
from .schema import CONFLICT, error_response, request_example
from .serializers import (
    FlowRunDetailSerializer,
    FlowRunSerializer,
    WorkspaceRelatedField,
    flow_run_data,
    run_names,
    state_change_data,
)
from .throttles import ExpensiveEndpointThrottle
from .views import WorkspaceScoped


class IdempotencyKeyUsed(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "idempotency_key_used"
    default_detail = "The run this idempotency key made has been deleted; send a new key to make a new run."


def acting_person(request):
    """The person behind the request, for history rows; None for a service key."""
    user = request.user
    return user if getattr(user, "pk", None) else None


def acting_key(request):
    """The API key the request came with; None for a browser session."""
    return request.auth if isinstance(request.auth, ApiKey) else None


@extend_schema_serializer(examples=[
    request_example("Run now, once", {"flow": "nightly-etl", "parameters": {"day": "2026-11-22"},
                                      "idempotency_key": "ci-build-4711"}),
    request_example("Later, on another queue", {"flow": "nightly-etl", "work_queue": "gpu",
                                                "scheduled_start": "2026-11-24T06:00:00Z", "name": "backfill"}),
])
class FlowRunCreateSerializer(serializers.Serializer):
    flow = WorkspaceRelatedField(slug_field="name", queryset=Flow.objects.all(), help_text="The flow's name.")
    parameters = serializers.DictField(required=False, help_text="Merged over the version's defaults.")
    work_queue = WorkspaceRelatedField(slug_field="name", queryset=WorkQueue.objects.all(), required=False,
                                       allow_null=True)
    scheduled_start = serializers.DateTimeField(required=False, help_text="Default: now.")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    idempotency_key = serializers.CharField(
        max_length=200, required=False, allow_null=True,
        help_text="Sending the same key again returns the first run (200) instead of a new one (201).",
    )


def _plain_text(value, max_length):
    """Whether FlowRunCreateSerializer's CharField takes `value` as it is: a string, not longer than
    `max_length`, that trimming would not change and its validators would not refuse (NUL, lone
    surrogates: refused by the JSON parser already, checked again for any other parser)."""
    return type(value) is str and len(value) <= max_length and value == value.strip() and not UNSTORABLE.search(value)


def plain_create_request(data):
    """A create request's validated fields without the serializer, for its common JSON shape: `flow` a
    name, `parameters` an object, `name` and `idempotency_key` text the CharFields take as they are,
    no `work_queue` (or null) and no `scheduled_start`. The fields then are exactly the serializer's
    validated_data but for `flow`, still a name. None for anything else: the serializer judges it."""
    if type(data) is not dict:
        return None
    flow, key, parameters = data.get("flow"), data.get("idempotency_key"), data.get("parameters")
    if (type(flow) is not str or not flow or "scheduled_start" in data or data.get("work_queue") is not None
            or (key is not None and not (key and _plain_text(key, 200)))
            or ("parameters" in data and type(parameters) is not dict)
            or ("name" in data and not _plain_text(data["name"], 200))):
        return None
    asked = {"flow": flow}
    if "parameters" in data:
        asked["parameters"] = parameters
    if "name" in data:
        asked["name"] = data["name"]
    if "idempotency_key" in data:
        asked["idempotency_key"] = key
    return asked


@extend_schema_serializer(examples=[request_example("Fail it", {
    "state": "FAILED", "message": "Stuck on a lock; failing by hand.", "expected_state": "RUNNING"})])
class SetStateSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=State.choices)
    message = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    expected_state = serializers.ChoiceField(
        choices=State.choices, required=False,
        help_text="Refuse (409) unless the run is still in this state; default: the state it has now.",
    )

    @classmethod
    def validated(cls, data):
        """The body's validated data. A plain body (known states, a short ASCII message: what DRF
        would accept unchanged but for the message's trimmed whitespace) is read directly, since
        building the serializer (a deep copy of its fields) was a fifth of a state change's CPU;
        any other body goes through the serializer, which answers its 400s."""
        if isinstance(data, dict) and data.keys() <= _SET_STATE_KEYS and _is_state(data.get("state")) and (
                "expected_state" not in data or _is_state(data["expected_state"])):
            message = data.get("message", "")
            if type(message) is str and message.isascii() and "\x00" not in message:
                message = message.strip()
                if len(message) <= cls._declared_fields["message"].max_length:
                    plain = {"state": data["state"], "message": message}
                    if "expected_state" in data:
                        plain["expected_state"] = data["expected_state"]
                    return plain
        incoming = cls(data=data)
        incoming.is_valid(raise_exception=True)
        return incoming.validated_data


_SET_STATE_KEYS = frozenset(SetStateSerializer._declared_fields)


def _is_state(value):
    return type(value) is str and value in STATE_VALUES


class RunPages(KeysetPagination):
    """`ordering` picks the key; `-scheduled_start` pairs with the (workspace, state,
    scheduled_start, id) index for "runs in this state within this time range"."""

    orderings = ("-created", "created", "-scheduled_start", "scheduled_start")
    ordering_query_param = "ordering"


HISTORY = ("history__user", "history__agent")

FILTERS = [
    OpenApiParameter("state", str, description="One or more states, comma-separated, e.g. FAILED,CRASHED."),
    OpenApiParameter("flow", str, description="The flow's name."),
    OpenApiParameter("schedule", str, description="The schedule's slug."),
    OpenApiParameter("auto_scheduled", bool, description="true: made by the scheduler; false: manual."),
    OpenApiParameter("scheduled_after", OpenApiTypes.DATETIME, description="scheduled_start ≥ this."),
    OpenApiParameter("scheduled_before", OpenApiTypes.DATETIME, description="scheduled_start < this."),
    OpenApiParameter("ordering", str, enum=RunPages.orderings, description="Default -created; ties by id."),
]


@extend_schema_view(
    list=extend_schema(parameters=FILTERS, description=(
        "Runs of the workspace in stable cursor pages (newest first unless `ordering` says otherwise), filtered by "
        "state, flow, schedule, scheduled time window and whether the scheduler made them.")),
    retrieve=extend_schema(description="One run with its state history: who moved it from what to what, why, when."),
    create=extend_schema(request=FlowRunCreateSerializer, responses={
        201: FlowRunSerializer, 200: OpenApiResponse(FlowRunSerializer, description="The run this key made before."),
        409: error_response("The run this idempotency key made has been deleted.", "Key used",
                            error_body("idempotency_key_used", IdempotencyKeyUsed.default_detail))}),
)
class FlowRunViewSet(WorkspaceScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Runs of the workspace. Viewers read; operators run, set states, cancel and retry."""

    # Listed: not soft-deleted, and not of a flow or schedule being deleted in the background.
    queryset = FlowRun.objects.listed().select_related("flow", "work_queue", "agent", "created_by", "created_by_key")
    pagination_class = RunPages
    filter_backends = [FilterBackend]
    filterset_class = FlowRunFilter
    throttle_classes = [ExpensiveEndpointThrottle]
    expensive_actions = {"list", "create"}
    action_roles = {"create": Role.OPERATOR, "set_state": Role.OPERATOR, "cancel": Role.OPERATOR,
                    "retry": Role.OPERATOR}

    def get_serializer_class(self):
        if self.action == "create":
            return FlowRunCreateSerializer
        if self.action == "list":
            return FlowRunSerializer
        return FlowRunDetailSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "retrieve":
            return queryset.prefetch_related(*HISTORY)
        return queryset  # a list's filters: FlowRunFilter (runs/api/filtersets.py)

    def create(self, request, *args, **kwargs):
        """Create a manual run; with an idempotency key, a repeat returns the first run."""
        asked = plain_create_request(request.data)
        # The common request (a flow by name, perhaps parameters, a name and a key) is read with the
        # flow's latest version and the default queue in one query; any other request, an unknown
        # flow or a workspace without its default queue yet goes through the serializer, which
        # words the errors and makes the queue.
        found = asked and hot_sql.manual_run_target(request.workspace.pk, asked["flow"], DEFAULT_QUEUE)
        flow, version, queue = found or (None, LATEST, None)
        if queue is None:
            incoming = FlowRunCreateSerializer(data=request.data, context=self.get_serializer_context())
            incoming.is_valid(raise_exception=True)
            data, version = incoming.validated_data, LATEST
        else:
            data = {**asked, "flow": flow, "work_queue": queue}
        try:
            run, created = create_manual_run(
                data["flow"], user=acting_person(request), api_key=acting_key(request),
                parameters=data.get("parameters"), work_queue=data.get("work_queue"),
                scheduled_start=data.get("scheduled_start"),
                idempotency_key=data.get("idempotency_key"), name=data.get("name", ""), version=version,
            )
        except IntegrityError:
            # The key's run was taken and then vanished before it was read (create_manual_run), or
            # another constraint refused: when a run has the key now, it is the answer. Any other
            # conflict (no key, or not about the key) is the error handler's 400.
            key = data.get("idempotency_key")
            run = FlowRun.objects.filter(workspace=request.workspace, idempotency_key=key).first() if key else None
            if run is None:
                raise
            created = False
        if not created:
            # Made earlier: load what the answer names in one query. It may since have been deleted.
            run = self.get_queryset().filter(pk=run.pk).first()
            if run is None:
                raise IdempotencyKeyUsed()
        # A new run already holds its flow, queue and creator: answering needs no query.
        return Response(flow_run_data(run), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def run_id(self):
        """The run id of the URL (not a UUID: 404, as get_object() answers)."""
        try:
            return uuid.UUID(str(self.kwargs[self.lookup_url_kwarg or self.lookup_field]))
        except ValueError:
            raise Http404 from None

    def run_to_change(self):
        """The run of the URL, as get_object() finds it (listed, of this workspace, else 404), with
        the names its answer shows: one query (runs/hot_sql.py) instead of the queryset's five joins."""
        found = hot_sql.run_to_change(self.run_id(), self.request.workspace.pk)
        if found is None:
            raise Http404
        self.check_object_permissions(self.request, found[0])
        return found

    def change_state(self, found, to_state, **kwargs):
        """set_flow_run_state(run, to_state, **kwargs) for `found` (run_to_change()), answered as the
        detail page shows the run without reading it again: the state change returns the run's new
        columns, the names loaded with it stand for the ids that did not change (others are read),
        and the history with its people's and agents' names comes back with the move (on PostgreSQL
        in its statement)."""
        run, names = found
        ids = {name: getattr(run, f"{name}_id") for name in names}
        run, history = set_flow_run_state(run, to_state, history=True, **kwargs)
        moved = [name for name, id_ in ids.items() if getattr(run, f"{name}_id") != id_]
        if moved:  # e.g. claimed by an agent between the load and the update
            names = {**names, **run_names(run, moved)}
        return Response({**flow_run_data(run, names), "history": [state_change_data(change) for change in history]})

    @extend_schema(request=SetStateSerializer, responses={200: FlowRunDetailSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"], url_path="set_state")
    def set_state(self, request, *args, **kwargs):
        """Move the run to a state; an illegal or stale transition is a 409 naming the current state."""
        try:
            data = SetStateSerializer.validated(request.data)
        except exceptions.APIException:
            self.run_to_change()  # a run that is not there is a 404 before its body's 400
            raise
        user, expected = acting_person(request), data.get("expected_state")
        if not self.checks_objects():
            # The usual case in one statement: found, moved, answered (runs/states.py).
            done = set_listed_flow_run_state(self.run_id(), request.workspace.pk, data["state"], actor=Actor.USER,
                                             user=user, message=data["message"], expected_state=expected)
            if done is None:
                raise Http404
            if not isinstance(done, NotMoved):
                run, names, history = done
                return Response({**flow_run_data(run, names),
                                 "history": [state_change_data(change) for change in history]})
            expected = done.state  # refused as the general path refuses what it saw (stale, illegal)
        return self.change_state(self.run_to_change(), data["state"], actor=Actor.USER, user=user,
                                 message=data["message"], expected_state=expected)

    def checks_objects(self):
        """Whether a permission class of this view looks at the run itself (has_object_permission):
        then the run is read and checked before it moves."""
        return any(type(permission).has_object_permission is not permissions.BasePermission.has_object_permission
                   for permission in self.get_permissions())

    @extend_schema(request=None, responses={200: FlowRunDetailSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request, *args, **kwargs):
        """A run that has not started is CANCELLED at once; a started one goes to CANCELLING for its agent."""
        found = self.run_to_change()
        run = found[0]
        target = State.CANCELLED if run.state in (State.SCHEDULED, State.LATE) else State.CANCELLING
        return self.change_state(found, target, actor=Actor.USER, user=acting_person(request),
                                 message=f"Cancelled by {request.user}")

    @extend_schema(request=None, responses={200: FlowRunDetailSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def retry(self, request, *args, **kwargs):
        """A finished run is SCHEDULED again, due now; a run not finished is a 409."""
        found = self.run_to_change()
        run = found[0]
        if run.state not in TERMINAL_STATES:
            raise IllegalTransition(f"Only a finished run can be retried; this one is {run.state}.",
                                    current=run.state, requested=State.SCHEDULED)
        return self.change_state(found, State.SCHEDULED, actor=Actor.USER, user=acting_person(request), retry=True,
                                 message=f"Retried by {request.user}", updates={"scheduled_start": timezone.now()})

