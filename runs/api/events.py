"""The workspace's events: a list in keyset pages newest first, and a server-sent-events stream.

Both take the same filters (events/filters.py): `name` (prefix or glob, repeatable), `resource_kind`,
`resource_id`, `related_id`, `about`, `since`, `until`; a bad value is a 400 naming it. Viewers
and up, with an API key or a session.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from events import filters, stream
from events.models import Event

from .pagination import KeysetPagination
from .schema import EXAMPLE_RUN_ID, response_example

FILTER_PARAMETERS = [
    OpenApiParameter("name", str, many=True, description="An event name, a prefix of one (`flow-run.state`) or a "
                     "pattern with * and ? (`*.crashed`); repeat or separate with commas for any of several (≤ 10)."),
    OpenApiParameter("resource_kind", str, description="The kind of the event's resource: flow-run, task-run, flow, "
                     "schedule, work-queue, agent, service, webhook, automation."),
    OpenApiParameter("resource_id", str, description="The id of the event's resource."),
    OpenApiParameter("related_id", str, description="The id of one of the event's related resources."),
    OpenApiParameter("about", str, description="The id of the event's resource or of a related one (a run: its "
                     "own events and those of its task runs)."),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="occurred ≥ this."),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="occurred < this."),
]


def filtered_events(request):
    """The request's workspace's events chosen by the query string; a bad filter is a 400 naming it."""
    try:
        chosen = filters.parse(request.query_params)
    except filters.BadFilter as exc:
        raise serializers.ValidationError({exc.field: [exc.message]}) from None
    return chosen.apply(Event.objects.filter(workspace=request.workspace))


@extend_schema_serializer(examples=[response_example("A crash", {
    "id": "9d0c1a7e-3f41-4c1b-8a77-0e5d1f2b3c4d", "occurred": "2026-11-29T08:12:03.120000Z",
    "received": "2026-11-29T08:12:03.410000Z", "name": "flow-run.state.crashed",
    "resource": {"kind": "flow-run", "id": EXAMPLE_RUN_ID},
    "related": [{"kind": "flow", "id": "12"}, {"kind": "work-queue", "id": "3"}],
    "payload": {"from": "RUNNING", "to": "CRASHED", "actor": "zombie-killer", "verdict": "no sign of life",
                "message": "Marked \"Crashed\" by a Zombie Killer process: no sign of life for over 1800 s.",
                "threshold_seconds": 1800}})])
class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = Event
        fields = ["id", "occurred", "received", "name", "resource", "related", "payload"]
        read_only_fields = fields


class EventPages(KeysetPagination):
    orderings = ("-occurred",)
    max_page_size = 200


class EventListView(ListAPIView):
    serializer_class = EventSerializer
    pagination_class = EventPages

    def get_queryset(self):
        return filtered_events(self.request)

    @extend_schema(parameters=FILTER_PARAMETERS, description=(
            "The workspace's events, newest first (by when they happened) in keyset pages: follow `next`. "
            "Every state change, heartbeat verdict, recovery act, pause and resume, agent and queue health "
            "change, service failure and incoming webhook is one. Kept for the workspace's "
            "event_retention_days."))
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class EventStreamView(APIView):
    """text/event-stream of the workspace's events as they are stored (see events/stream.py)."""

    @extend_schema(exclude=True)  # a stream, not a JSON answer: described in the README
    def get(self, request, *args, **kwargs):
        events = filtered_events(request)
        try:
            cursor = stream.start_cursor(request)
        except filters.BadFilter as exc:
            raise serializers.ValidationError({exc.field: [exc.message]}) from None
        return stream.response_for(request, stream.EventStream(events, cursor))

    def perform_content_negotiation(self, request, force=False):
        # A client of the stream asks for text/event-stream; its answer is not rendered, and any
        # error (a 400 naming a filter, a 401) is the API's JSON error form.
        return JSONRenderer(), JSONRenderer.media_type
