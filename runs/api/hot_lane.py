"""The hot lane: a flow run's heartbeat, the request a server hears most (every running flow, every
30 s by default), answered without the work of Django's request cycle around it: under a WSGI
server (gunicorn, production) in front of Django's handler (`HotLaneApplication`,
orchestrator/wsgi.py); under ASGI, and in the tests' client, right after the security middleware
(`HotLaneMiddleware`). URL resolution, sessions, CSRF, messages and DRF cost a beat more CPU than
its work, and Django's handler with its signals and response object half as much again (issue 16;
`make bench BENCH_ARGS=http`, "flow-run heartbeat").

The lane answers only a beat that is in order: a valid report token for the run the URL names, of
its current attempt, in the workspace the URL names, to an allowed host, without a body or a query
string, accepting JSON (`*/*` or `application/json`, the agent's). Anything else (no token, a bad
one, another run's, an earlier attempt's, a deleted workspace, a host not allowed, another
`Accept`, a database error, a plain-HTTP request the server would redirect)
falls through to the API's view, which does the same work and answers with its errors and their
explanations, so the lane never says anything the API would not. The work itself is the view's:
`record_flow_run_heartbeat`, and `known_workspace` for the workspace. The lane's answer carries
the headers the view's answer has (tests/agent/test_hot_lane.py compares them, case by case).
"""

import io
import json
import re

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.http import HttpResponse
from django.middleware.security import SecurityMiddleware
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from rest_framework import exceptions
from rest_framework.settings import api_settings

from runs.run_tokens import InvalidRunToken, is_run_token, read_token

# The URL of runs.api.agents' "agent-flow-run-heartbeat", with Django's slug and uuid converters' patterns.
FLOW_RUN_HEARTBEAT = re.compile(
    r"/api/accounts/(?P<account>[-a-zA-Z0-9_]+)/workspaces/(?P<workspace>[-a-zA-Z0-9_]+)/agent/flow_runs/"
    r"(?P<run_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/heartbeat")


# What a beat may accept for the lane to answer it: DRF's JSON, whatever its renderers (anything
# else is the view's content negotiation, whose answer may be a 406 or, with DEBUG, an HTML page).
PLAIN_ACCEPT = frozenset({"*/*", "application/json"})

# Set in the environ of a beat HotLaneApplication tried and left to Django: the middleware does not try again.
TRIED = "orchestrator.hot_lane.tried"


class HotLaneMiddleware:
    """Placed after SecurityMiddleware (its headers are on the lane's answers too) and before the
    rest; see the module's docstring. Under gunicorn HotLaneApplication has answered such a beat
    already; this one answers under ASGI and in the tests' client."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if (request.method == "POST" and request.path_info.endswith("/heartbeat")
                and TRIED not in request.META):  # HotLaneApplication's fall-through: the view's now
            try:
                request.get_host()  # the common middleware's check: a host not allowed is its 400
            except DisallowedHost:
                return self.get_response(request)
            body = flow_run_heartbeat(request.path_info, request.META)
            if body is not None:
                return _as_the_api_answers(body)
        return self.get_response(request)


class HotLaneApplication:
    """The WSGI application: Django's handler (`django_application`), with an in-order heartbeat
    answered before it. Such a beat needs none of what the handler does around a view: its signals
    (the one database connection the lane uses is checked here as they would check it), its
    request and response objects, and the middleware: the host check, the security middleware's
    redirect and headers are Django's own, worked out once per host and scheme (`_reading`)."""

    # What Django reads of a request to find its host and whether it is secure.
    HOST_AND_SCHEME = ("HTTP_HOST", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT", "SERVER_NAME", "SERVER_PORT",
                       "wsgi.url_scheme")
    READINGS = 256  # at most this many hosts and schemes remembered (any more: forgotten, read again)

    def __init__(self, django_application):
        self.django_application = django_application
        self._readings = {}
        setting_changed.connect(self._forget)  # the settings read: the tests' to change

    def __call__(self, environ, start_response):
        if (environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO", "").endswith("/heartbeat")
                and environ.get("CONTENT_LENGTH", "") in ("", "0") and "HTTP_TRANSFER_ENCODING" not in environ):
            answer = self.heartbeat(environ)
            if answer is not None:
                start_response("200 OK", answer[0])
                return [answer[1]]
            environ[TRIED] = True
        return self.django_application(environ, start_response)

    def heartbeat(self, environ):
        """(headers, body) of the answer to an in-order beat, else None."""
        headers = self._reading(environ)
        if headers is None:
            return None  # a host not allowed (400), or plain HTTP to redirect: the middleware's
        db = connections[DEFAULT_DB_ALIAS]
        db.close_if_unusable_or_obsolete()  # what Django's request_started does for it
        body = flow_run_heartbeat(environ["PATH_INFO"], environ)
        if body is None:
            return None
        db.close_if_unusable_or_obsolete()  # and its request_finished
        return [*headers, ("Content-Length", str(len(body)))], body

    def _reading(self, environ):
        """The headers of the lane's answer to this host and scheme (but Content-Length), or None
        when the middleware must see the request: a host Django does not allow, or plain HTTP that
        the security middleware redirects (when SECURE_SSL_REDIRECT is on; an exempt path gets there
        too). Django's request and security middleware decide, the first time a host and scheme
        are seen."""
        proxy_header = settings.SECURE_PROXY_SSL_HEADER
        key = (*(environ.get(name) for name in self.HOST_AND_SCHEME), proxy_header and environ.get(proxy_header[0]))
        try:
            return self._readings[key]
        except KeyError:
            pass
        request = WSGIRequest({**environ, "wsgi.input": io.BytesIO()})
        headers = None
        try:
            request.get_host()
        except DisallowedHost:
            pass
        else:
            if request.is_secure() or not settings.SECURE_SSL_REDIRECT:
                security = SecurityMiddleware(_as_the_api_answers)  # its answers are not asked for
                answer = security.process_response(request, _as_the_api_answers(b""))
                headers = [item for item in answer.items() if item[0] != "Content-Length"]
        if len(self._readings) >= self.READINGS:
            self._readings.clear()
        self._readings[key] = headers
        return headers

    def _forget(self, **kwargs):
        self._readings.clear()


def flow_run_heartbeat(path_info, meta):
    """The body of the answer to a flow run's heartbeat that is in order (its URL's path, and its
    WSGI environ or request.META `meta`), else None (the API's view answers)."""
    from runs.api.agents import record_flow_run_heartbeat
    from runs.api.permissions import known_workspace

    match = FLOW_RUN_HEARTBEAT.fullmatch(path_info)
    if match is None or meta.get("QUERY_STRING") or meta.get("HTTP_ACCEPT", "*/*") not in PLAIN_ACCEPT:
        return None
    header = meta.get("HTTP_AUTHORIZATION", "").split()
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
    return json.dumps({"state": state}, separators=(",", ":")).encode()


def _as_the_api_answers(body):
    """`body` with the headers the view's answer has (DRF's JSON, `Allow`, its `Vary` when it
    negotiates between renderers, and what the middleware the lane skips adds: Content-Length,
    X-Frame-Options)."""
    response = HttpResponse(body, content_type="application/json")
    response.headers["Content-Length"] = str(len(body))
    response.headers["Allow"] = "POST, OPTIONS"
    if len(api_settings.DEFAULT_RENDERER_CLASSES) > 1:
        patch_vary_headers(response, ["Accept"])
    response.headers["X-Frame-Options"] = settings.X_FRAME_OPTIONS
    return response
