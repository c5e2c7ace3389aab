"""The hot lane: a flow run's heartbeat, the request a server hears most (every running flow, every
30 s by default), answered right after the security middleware, before URL resolution, sessions,
CSRF, messages and DRF, which cost a beat more CPU than its work (issue 16; `make bench
BENCH_ARGS=http`, "flow-run heartbeat").

The lane answers only a beat that is in order: a valid report token for the run the URL names, of
its current attempt, in the workspace the URL names. Anything else (no token, a bad one, another
run's, an earlier attempt's, a deleted workspace, a query string, a database error) falls through to
the API's view, which does the same work and answers with its errors and their explanations, so
the lane never says anything the API would not. The work itself is the view's:
`record_flow_run_heartbeat`, and `known_workspace` for the workspace.
"""

import json
import re

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from rest_framework import exceptions
from rest_framework.settings import api_settings

from runs.run_tokens import InvalidRunToken, is_run_token, read_token

# The URL of runs.api.agents' "agent-flow-run-heartbeat", with Django's slug and uuid converters' patterns.
FLOW_RUN_HEARTBEAT = re.compile(
    r"/api/accounts/(?P<account>[-a-zA-Z0-9_]+)/workspaces/(?P<workspace>[-a-zA-Z0-9_]+)/agent/flow_runs/"
    r"(?P<run_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/heartbeat")


class HotLaneMiddleware:
    """Placed after SecurityMiddleware (its headers are on the lane's answers too) and before the
    rest; see the module's docstring."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "POST" and request.path_info.endswith("/heartbeat"):
            answer = flow_run_heartbeat(request)
            if answer is not None:
                return answer
        return self.get_response(request)


def flow_run_heartbeat(request):
    """The answer to a flow run's heartbeat that is in order, else None (the API's view answers)."""
    from runs.api.agents import record_flow_run_heartbeat
    from runs.api.permissions import known_workspace

    match = FLOW_RUN_HEARTBEAT.fullmatch(request.path_info)
    if match is None or request.META.get("QUERY_STRING"):
        return None
    header = request.META.get("HTTP_AUTHORIZATION", "").split()
    if len(header) != 2 or header[0] != "Bearer" or not is_run_token(header[1]):
        return None
    try:
        grant = read_token(header[1])
    except InvalidRunToken:
        return None  # the view refuses it, and counts the failure
    if str(grant.run_id) != match["run_id"]:
        return None
    try:
        known_workspace(grant.workspace_id, match["account"], match["workspace"])
        state = record_flow_run_heartbeat(grant.run_id, grant.workspace_id, timezone.now(), grant.generation)
    except (exceptions.NotFound, DatabaseError):
        return None
    if state is None:
        return None
    return _as_the_api_answers({"state": state}, allow="POST, OPTIONS")


def _as_the_api_answers(body, allow):
    """`body` with the headers the view's answer has (DRF's JSON, `Allow`, its `Vary` when it
    negotiates between renderers, and what the middleware the lane skips adds: Content-Length,
    X-Frame-Options)."""
    response = HttpResponse(json.dumps(body, separators=(",", ":")).encode(), content_type="application/json")
    response.headers["Content-Length"] = str(len(response.content))
    response.headers["Allow"] = allow
    if len(api_settings.DEFAULT_RENDERER_CLASSES) > 1:
        patch_vary_headers(response, ["Accept"])
    response.headers["X-Frame-Options"] = settings.X_FRAME_OPTIONS
    return response
