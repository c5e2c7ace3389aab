"""How the API documents itself (drf-spectacular), beyond what each view declares.

- Examples live on the serializers they show (`extend_schema_serializer(examples=...)`), so every
  operation that sends or returns a serializer shows an example without per-view decorators.
- Every operation under a workspace can answer with the one error form: bad input (400), no or a
  bad key (401), a role too low (403), an unknown workspace or object (404), throttled (429, with
  Retry-After), a database that is unreachable for a moment (503, with Retry-After), and for a
  body, one too large to read (413) or unreadable (415). `errors_documented` adds those answers
  to the schema; the rarer ones (409 for a refused transition, the log batch's own 413) are
  declared by the views that give them.
"""

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema_serializer
from rest_framework import serializers

from runs.models import State

from .errors import database_unavailable_body, error_body, too_large_body

WORKSPACE_PREFIX = "/api/accounts/{account}/workspaces/{workspace}/"
# Ids the examples share, so that a run's example log line names the run's example id.
EXAMPLE_RUN_ID = "0b3f7c9e-6d2a-4f4e-9a51-2f6f1f0c2b11"
EXAMPLE_TASK_RUN_ID = "5e1d2c3b-4a59-4687-8796-a5b4c3d2e1f0"


def request_example(name, value):
    return OpenApiExample(name, value=value, request_only=True)


def response_example(name, value):
    return OpenApiExample(name, value=value, response_only=True)


@extend_schema_serializer(component_name="ErrorDetail")
class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, for programs: invalid, not_found, permission_denied, …")
    message = serializers.CharField(help_text="For people: what is wrong and what to do about it.")
    fields = serializers.DictField(
        help_text="Input fields (or query parameters) that were refused, each with its problems; {} otherwise.")


@extend_schema_serializer(component_name="Error")
class ErrorSerializer(serializers.Serializer):
    """Every 4xx and 5xx answer of the API has this form."""

    error = ErrorDetailSerializer()


@extend_schema_serializer(component_name="Conflict")
class ConflictSerializer(ErrorSerializer):
    """A refused state change: the error, and the state the run is in now."""

    current_state = serializers.ChoiceField(choices=State.choices)


def error_response(description, example_name, example, serializer=ErrorSerializer):
    return OpenApiResponse(serializer, description=description, examples=[OpenApiExample(example_name, value=example)])


CONFLICT = error_response(
    "The run is not in a state that allows this change, or it changed meanwhile; `current_state` says which.",
    "Stale or illegal", {**error_body("illegal_transition", "A COMPLETED run cannot move to RUNNING.",
                                         {"state": ["A COMPLETED run cannot move to RUNNING."]}),
                         "current_state": "COMPLETED"},
    serializer=ConflictSerializer,
)

COMMON_ERRORS = {
    "400": ("The input is invalid: `fields` names each refused field or query parameter.",
            error_body("invalid", "name: This field is required.", {"name": ["This field is required."]})),
    "401": ("No credentials, or the API key is unknown, revoked or expired.",
            error_body("authentication_failed", "This API key is unknown, revoked or expired.")),
    "403": ("Your role in this workspace does not allow this; the message names the role it needs.",
            error_body("permission_denied",
                          "Your role in this workspace is viewer; this action needs operator or above.")),
    "404": ("No such workspace for you, or no such object in it (another workspace's objects are 404 too).",
            error_body("not_found", "Not found.")),
    "429": ("Too many requests (failed authentications from your address, or an expensive endpoint); "
            "retry after the seconds in Retry-After.",
            error_body("throttled", "Request was throttled. Expected available in 42 seconds.")),
    "503": ("The database is unreachable for a moment (a restart or failover); retry after the seconds in "
            "Retry-After. Nothing is wrong with the request.", database_unavailable_body()),
}
UNSUPPORTED_MEDIA_TYPE = (
    "The body is not JSON, a form or multipart form data (or cannot be read as its Content-Type says).",
    error_body("unsupported_media_type", 'Unsupported media type "text/plain" in request.'))
TOO_LARGE = ("The body is larger than the server reads (ORCHESTRATOR_API_MAX_BODY_BYTES).", too_large_body())
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}


def errors_documented(result, generator, request, public):
    """Postprocessing hook: give every workspace operation its common error answers."""
    for path, operations in result.get("paths", {}).items():
        if not path.startswith(WORKSPACE_PREFIX):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            errors = {**COMMON_ERRORS, "413": TOO_LARGE, "415": UNSUPPORTED_MEDIA_TYPE} if "requestBody" in operation \
                else COMMON_ERRORS
            for code, (description, example) in errors.items():
                if code in responses:
                    continue
                responses[code] = {
                    "description": description,
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"},
                        "examples": {"Example": {"value": example}},
                    }},
                }
                if code in ("429", "503"):
                    responses[code]["headers"] = RETRY_AFTER
    return result
