"""A workspace's incoming webhooks in the API (`webhooks/`): admins only, as their URLs are credentials.

The answer carries the webhook's URL (its slug is the secret part) and the name of the workspace
secret that signs its bodies, never that secret's value. `rotate` gives a webhook a new URL.
"""

from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from events.models import IncomingWebhook, new_webhook_slug
from events.webhooks import TemplateError, check_template
from runs import actions, audit
from runs.api.schema import request_example, response_example
from runs.api.views import WorkspaceScoped
from runs.audit import Who
from runs.models import Role, Secret

EXAMPLE = {"name": "deploys", "enabled": True, "secret_name": "DEPLOY_HOOK_KEY",
           "template": {"name": "deploy.{{ body.status }}", "resource": {"kind": "deploy", "id": "{{ body.id }}"},
                        "payload": "{{ body }}"}}


@extend_schema_serializer(examples=[
    request_example("Deploy notifications, signed", EXAMPLE),
    response_example("As stored", {"id": 3, **EXAMPLE, "slug": "q3Jx…43 characters…",
                                   "url": "https://orchestrator.example.com/hooks/q3Jx…",
                                   "created": "2026-11-29T08:00:00Z"}),
])
class IncomingWebhookSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField(help_text="Where the other system POSTs (the slug is its secret part).")

    class Meta:
        model = IncomingWebhook
        fields = ["id", "name", "slug", "url", "enabled", "secret_name", "template", "created"]
        read_only_fields = ["id", "slug", "url", "created"]

    def get_url(self, webhook) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(webhook.path) if request is not None else webhook.path

    def validate_template(self, value):
        try:
            check_template(value)
        except TemplateError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value or {}

    def validate_secret_name(self, value):
        workspace = self.context["request"].workspace
        if value and not Secret.objects.filter(workspace=workspace, name=value).exists():
            raise serializers.ValidationError(f"This workspace has no secret named {value}; add it first (secrets/).")
        return value


def _taken(name):
    return serializers.ValidationError({"name": [f"This workspace already has a webhook named {name}."]})


@extend_schema_view(
    list=extend_schema(description="The workspace's incoming webhooks with their URLs (admins)."),
    retrieve=extend_schema(description="One incoming webhook with its URL and template (admins)."),
    create=extend_schema(description="Add an incoming webhook (admins); its URL is in the answer."),
    update=extend_schema(description="Replace an incoming webhook's name, template, secret and switch (admins)."),
    partial_update=extend_schema(description="Change some of an incoming webhook's fields (admins)."),
    destroy=extend_schema(description="Delete an incoming webhook (admins): its URL answers 404 from now on."),
    rotate=extend_schema(request=None, description="Give an incoming webhook a new URL (admins); the old one "
                                                   "answers 404 from now on."),
)
class IncomingWebhookViewSet(WorkspaceScoped, viewsets.ModelViewSet):
    """Incoming webhooks: URLs that turn other systems' requests into events."""

    queryset = IncomingWebhook.objects.order_by("name")
    serializer_class = IncomingWebhookSerializer
    required_role = Role.ADMIN
    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    def _save(self, save, action_name, before=None):
        try:
            return actions.save_with_audit(save, who=Who.of(self.request, "api"), action=action_name, before=before)
        except IntegrityError:
            raise _taken(self.request.data.get("name")) from None

    def perform_create(self, serializer):
        self._save(lambda: serializer.save(workspace=self.request.workspace), "incoming_webhook.create")

    def perform_update(self, serializer):
        self._save(serializer.save, "incoming_webhook.change", before=audit.snapshot(serializer.instance))

    def perform_destroy(self, webhook):
        with transaction.atomic():
            audit.record(Who.of(self.request, "api"), "incoming_webhook.delete", webhook,
                         before=audit.snapshot(webhook))
            webhook.delete()

    @action(detail=True, methods=["post"])
    def rotate(self, request, *args, **kwargs):
        webhook = self.get_object()

        def save():
            webhook.slug = new_webhook_slug()
            webhook.save(update_fields=["slug"])
            return webhook

        # The slug is not in the audited fields (it is a credential): the entry says it changed.
        with transaction.atomic():
            save()
            audit.record(Who.of(request, "api"), "incoming_webhook.rotate", webhook)
        return Response(self.get_serializer(webhook).data)


router = SimpleRouter()
router.register("webhooks", IncomingWebhookViewSet, basename="incoming-webhook")
urlpatterns = router.urls
