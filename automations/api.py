"""Automations over the API: viewers read, operators enable and disable, admins create, edit and
delete. A trigger and actions are validated by automations/triggers.py and automations/actions.py;
a refusal is a 400 naming the field ("trigger.within", "actions[0].url"). Each automation's
firings, newest first, in cursor pages."""

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from automations import changes
from automations.messages import shown_actions
from automations.models import Automation, Firing
from automations.triggers import describe
from runs.api.pagination import KeysetPagination
from runs.api.schema import request_example, response_example
from runs.api.views import WorkspaceScoped
from runs.audit import Who
from runs.models import Role

EXAMPLE_TRIGGER = {"type": "event", "posture": "reactive", "match": {"name": ["flow-run.state.failed"]},
                   "threshold": 3, "within": 600, "for_each": "resource"}
EXAMPLE_ACTIONS = [{"type": "send-email", "to": ["ops@example.com"]}]


@extend_schema_serializer(examples=[
    request_example("Three failures in 10 minutes", {
        "name": "Flaky flow", "description": "A flow run failed 3 times in 10 minutes.", "enabled": True,
        "trigger": EXAMPLE_TRIGGER, "actions": EXAMPLE_ACTIONS}),
    response_example("An automation", {
        "id": 4, "name": "Flaky flow", "description": "A flow run failed 3 times in 10 minutes.", "enabled": True,
        "trigger": EXAMPLE_TRIGGER, "actions": EXAMPLE_ACTIONS, "trigger_summary":
            "3 × flow-run.state.failed within 10 min (each resource apart)", "default_key": "",
        "last_fired": "2026-11-29T09:12:00Z", "created": "2026-11-28T08:00:00Z", "updated": "2026-11-28T08:00:00Z"}),
])
class AutomationSerializer(serializers.ModelSerializer):
    trigger = serializers.JSONField(help_text="What to watch for: an event trigger (reactive or proactive) or a "
                                              "compound of two (README, Automations).")
    actions = serializers.JSONField(required=False, help_text="What to do when it fires, in order.")
    trigger_summary = serializers.SerializerMethodField(help_text="The trigger in words.")
    default_key = serializers.CharField(read_only=True, help_text="Set on the defaults every workspace gets; "
                                                                  "empty on others.")

    class Meta:
        model = Automation
        fields = ["id", "name", "description", "enabled", "trigger", "actions", "trigger_summary", "default_key",
                  "last_fired", "created", "updated"]
        read_only_fields = ["default_key", "last_fired", "created", "updated"]

    def to_representation(self, automation):
        """Admins (who edit them) read the actions whole; others read destinations as the delivery
        log shows them: a Slack-compatible URL without its path (the credential), a webhook's
        without query string or user info (tokens)."""
        data = super().to_representation(automation)
        request = self.context.get("request")
        if getattr(request, "role", None) != Role.ADMIN:
            data["actions"] = shown_actions(data.get("actions"))
        return data

    def get_trigger_summary(self, automation) -> str:
        return describe(automation.trigger or {})

    def validate(self, attrs):
        try:
            return changes.clean(attrs, self.context["request"].workspace, self.instance)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None


@extend_schema_serializer(examples=[response_example("A firing", {
    "id": 91, "fired": "2026-11-29T09:12:00Z", "key": "flow-run:0b3f7c9e-6d2a-4f4e-9a51-2f6f1f0c2b11",
    "reason": "3 × flow-run.state.failed within 600 s (last: flow-run.state.failed on flow-run 0b3f7c9e)",
    "event_ids": ["6f9a9a52-52a3-4f57-8c9e-0d0f6f0a3f11"],
    "resource": {"kind": "flow-run", "id": "0b3f7c9e-6d2a-4f4e-9a51-2f6f1f0c2b11"},
    "results": [{"type": "send-email", "ok": True, "detail": "queued for ops@example.com"}]})])
class FiringSerializer(serializers.ModelSerializer):
    class Meta:
        model = Firing
        fields = ["id", "fired", "key", "reason", "event_ids", "resource", "results"]
        read_only_fields = fields


class FiringPages(KeysetPagination):
    orderings = ("-fired",)


@extend_schema_view(
    list=extend_schema(description="The workspace's automations, each with its trigger in words and when it last "
                                   "fired."),
    create=extend_schema(description="Add an automation (admins). The trigger and actions are validated; a refusal "
                                     "names the field, e.g. trigger.within."),
    retrieve=extend_schema(description="One automation with its trigger and actions."),
    partial_update=extend_schema(description="Change an automation's name, description, trigger or actions "
                                             "(admins); a changed trigger starts counting anew."),
    destroy=extend_schema(description="Delete an automation and its firings (admins)."),
)
class AutomationViewSet(WorkspaceScoped, viewsets.ModelViewSet):
    queryset = Automation.objects.order_by("name")
    serializer_class = AutomationSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    action_roles = {"enable": Role.OPERATOR, "disable": Role.OPERATOR, "firings": Role.VIEWER}

    def perform_create(self, serializer):
        serializer.instance = changes.create_automation(self.request.workspace, serializer.validated_data,
                                                        who=Who.of(self.request, "api"))

    def perform_update(self, serializer):
        serializer.instance = changes.change_automation(serializer.instance, serializer.validated_data,
                                                        who=Who.of(self.request, "api"))

    def perform_destroy(self, automation):
        changes.delete_automation(automation, who=Who.of(self.request, "api"))

    def _switch(self, enabled):
        automation = self.get_object()
        changes.set_enabled(automation, enabled, who=Who.of(self.request, "api"))
        return Response(AutomationSerializer(automation, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses=AutomationSerializer)
    @action(detail=True, methods=["post"])
    def enable(self, request, *args, **kwargs):
        """Turn the automation on (operators); its trigger and actions are checked again first."""
        return self._switch(True)

    @extend_schema(request=None, responses=AutomationSerializer)
    @action(detail=True, methods=["post"])
    def disable(self, request, *args, **kwargs):
        """Turn the automation off (operators); what its trigger counted so far is dropped."""
        return self._switch(False)

    @extend_schema(request=None, responses=FiringSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=FiringPages)
    def firings(self, request, *args, **kwargs):
        """The automation's firings, newest first: why each fired and what each action did."""
        automation = self.get_object()
        page = self.paginate_queryset(Firing.objects.filter(automation=automation))
        return self.get_paginated_response(FiringSerializer(page, many=True).data)
