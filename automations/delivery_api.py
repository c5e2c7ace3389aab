"""The delivery log over the API: what automations sent or tried to send (webhooks, e-mails, Slack
messages), newest first, and a retry for operators. Targets are shown without query strings (and a
Slack webhook without its path), which may hold tokens."""

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import exceptions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from automations import deliveries
from automations.messages import shown_target
from automations.models import Delivery, DeliveryKind, DeliveryStatus
from runs.api.pagination import KeysetPagination
from runs.api.errors import error_body
from runs.api.schema import error_response, response_example
from runs.api.views import WorkspaceScoped
from runs.audit import Who
from runs.models import Role


class AlreadyDelivered(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "already_delivered"
    default_detail = "This delivery was delivered; there is nothing to retry."


ALREADY_DELIVERED = error_response("The delivery was delivered; there is nothing to retry.", "Delivered",
                                   error_body("already_delivered", AlreadyDelivered.default_detail))


@extend_schema_serializer(examples=[response_example("A webhook being retried", {
    "id": 41, "firing": 7, "kind": "webhook", "target": "https://hooks.example.com/orchestrator",
    "subject": "", "status": "pending", "attempts": 2, "next_attempt": "2026-11-29T08:12:43Z",
    "last_status_code": 503, "last_error": "HTTP 503: upstream unavailable", "created": "2026-11-29T08:12:03Z",
    "delivered": None, "signed": True})])
class DeliverySerializer(serializers.ModelSerializer):
    target = serializers.SerializerMethodField(help_text="The URL (no query string; a Slack webhook without its "
                                                         "path) or the e-mail addresses.")
    signed = serializers.SerializerMethodField(help_text="Whether a webhook is signed with a workspace secret.")

    class Meta:
        model = Delivery
        fields = ["id", "firing", "kind", "target", "subject", "status", "attempts", "next_attempt",
                  "last_status_code", "last_error", "created", "delivered", "signed"]
        read_only_fields = fields

    def get_target(self, delivery) -> str:
        return shown_target(delivery.kind, delivery.target)

    def get_signed(self, delivery) -> bool:
        return bool(delivery.secret_name)


class DeliveryPages(KeysetPagination):
    orderings = ("-created",)


def choice_param(params, name, choices):
    value = params.get(name)
    if not value:
        return None
    if value not in choices.values:
        raise serializers.ValidationError({name: [f"Use one of {', '.join(choices.values)}."]})
    return value


@extend_schema_view(
    list=extend_schema(description="What the workspace's automations sent or are sending, newest first.",
                       parameters=[
                           OpenApiParameter("status", str, enum=DeliveryStatus.values,
                                            description="pending, delivered or failed (gave up)."),
                           OpenApiParameter("kind", str, enum=DeliveryKind.values,
                                            description="webhook, email or slack."),
                       ]),
    retrieve=extend_schema(description="One delivery, with its attempts and last error."),
)
class DeliveryViewSet(WorkspaceScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Delivery.objects.all()
    serializer_class = DeliverySerializer
    pagination_class = DeliveryPages
    action_roles = {"retry": Role.OPERATOR}

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        wanted = choice_param(params, "status", DeliveryStatus)
        if wanted:
            queryset = queryset.filter(status=wanted)
        kind = choice_param(params, "kind", DeliveryKind)
        if kind:
            queryset = queryset.filter(kind=kind)
        return queryset

    @extend_schema(request=None, responses={200: DeliverySerializer, 409: ALREADY_DELIVERED},
                   description="Send a failed or pending delivery again now (operators); a delivered one is a 409.")
    @action(detail=True, methods=["post"])
    def retry(self, request, *args, **kwargs):
        delivery = self.get_object()
        if delivery.status == DeliveryStatus.DELIVERED:
            raise AlreadyDelivered()
        deliveries.retry(Delivery.objects.filter(pk=delivery.pk), who=Who.of(request, "api"), now=timezone.now())
        delivery.refresh_from_db()
        return Response(DeliverySerializer(delivery).data)
