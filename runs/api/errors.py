"""One error form everywhere: {"error": {"code", "message", "fields"}}."""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from runs.states import TransitionError

logger = logging.getLogger(__name__)


def _flatten(detail):
    if isinstance(detail, dict):
        return {key: _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        flat = [_flatten(item) for item in detail]
        return flat if any(isinstance(item, (dict, list)) for item in flat) else [str(item) for item in flat]
    return str(detail)


def _message_for_fields(fields):
    parts = []
    for name, problems in fields.items():
        first = problems[0] if isinstance(problems, list) and problems else problems
        label = "input" if name == "non_field_errors" else name
        parts.append(f"{label}: {first}")
    return "; ".join(parts) or "The request is invalid."


# How long a client should wait after a 503 for an unreachable database: Django reconnects on the
# next request (CONN_HEALTH_CHECKS), so a retry soon is cheap; a few seconds lets a failover finish.
DATABASE_RETRY_AFTER_SECONDS = 5


def error_body(code, message, fields=None):
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def too_large_body():
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return error_body("payload_too_large", f"The request body is larger than {limit} bytes, the most this server "
                                           f"reads (ORCHESTRATOR_API_MAX_BODY_BYTES); send less at a time.")


def database_unavailable_body():
    return error_body("database_unavailable", "The database is unreachable right now; try again in a few seconds.")


def database_unavailable(exc):
    """OperationalError/InterfaceError: the connection broke (a restart, a failover, a killed
    backend) or SQLite stayed locked. Not the client's fault and usually brief: 503 + Retry-After.
    Django drops the broken connection when the request ends and opens a new one on the next."""
    logger.warning("Database unavailable, answered 503: %s", str(exc).strip()[:300])
    return Response(database_unavailable_body(), status=status.HTTP_503_SERVICE_UNAVAILABLE,
                    headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})


def exception_handler(exc, context):
    if isinstance(exc, TransitionError):
        return Response(
            error_body(exc.code, exc.message, {"state": [exc.message]}) | {"current_state": exc.current},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages})
    if isinstance(exc, IntegrityError):
        exc = exceptions.ValidationError({"non_field_errors": ["This conflicts with an existing object."]})
    if isinstance(exc, (OperationalError, InterfaceError)):
        set_rollback()
        return database_unavailable(exc)
    if isinstance(exc, RequestDataTooBig):  # a SuspiciousOperation, but not a suspicious one: 413
        return Response(too_large_body(), status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, SuspiciousOperation):  # too many fields or files, and the like
        return Response(error_body("invalid", f"The request was refused: {exc}"), status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        fields = _flatten(detail)
        response.data = error_body("invalid", _message_for_fields(fields), fields)
    elif isinstance(exc, Http404):
        response.data = error_body("not_found", "Not found.")
    elif isinstance(exc, exceptions.ParseError):  # the body as a whole could not be read
        message = str(exc.detail)
        response.data = error_body(exc.default_code, message, {"body": [message]})
    else:
        code = getattr(exc, "default_code", "error")
        response.data = error_body(code, str(getattr(exc, "detail", exc)))
    return response
