"""Request bodies are bounded before anything reads them, under either server.

Django's ASGI handler (uvicorn, what `make run` serves) reads a whole request body, spooling it to
an unnamed temporary file, before any view or middleware runs: a body declared at 10 GB, or a
chunked one that never ends, filled the disk at the speed of the network (1.7 GB in 15 s, measured)
and answered nothing. Under WSGI (gunicorn, production) Django reads a chunked body as empty, so
the client got a 400 about missing fields it had sent.

So, before the application sees the request:
- a body declared larger than DATA_UPLOAD_MAX_MEMORY_SIZE (ORCHESTRATOR_API_MAX_BODY_BYTES, the
  largest any endpoint takes), or than ORCHESTRATOR_WEBHOOK_MAX_BODY_BYTES for an incoming webhook,
  is a 413, unread;
- a chunked body (Transfer-Encoding without Content-Length) is a 411: every client this server
  has (agents, the SDK, webhook senders, browsers) sends a length;
- under ASGI, a body that still grows past the limit stops being read and is a 413.

The answer is the API's error form under /api/, the webhooks' own under /hooks/, plain text elsewhere.
"""

import json

from django.conf import settings

LENGTH_REQUIRED = "Send the request body with a Content-Length header; chunked request bodies are not read."
WEBHOOKS = "/hooks/"


def limit_for(path):
    """The most bytes a request to `path` may carry: an incoming webhook's own limit, else the API's
    (DATA_UPLOAD_MAX_MEMORY_SIZE, the largest any other endpoint takes; None: unbounded)."""
    if path.startswith(WEBHOOKS):
        return settings.ORCHESTRATOR["WEBHOOK_MAX_BODY_BYTES"]
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def answer(path, status):
    """(status, content type, body bytes) of a 411 or a 413 for `path`, each in the form its clients
    read: the webhooks' {"detail"}, the API's error form, plain text elsewhere."""
    if path.startswith(WEBHOOKS):
        from events.webhooks import too_large_detail

        detail = LENGTH_REQUIRED if status == 411 else too_large_detail()
        return status, "application/json", json.dumps({"detail": detail}).encode()
    from runs.api.errors import error_body, too_large_body  # the API's own error form and 413, word for word

    error = error_body("length_required", LENGTH_REQUIRED) if status == 411 else too_large_body()
    if path.startswith("/api/"):
        return status, "application/json", json.dumps(error).encode()
    return status, "text/plain; charset=utf-8", error["error"]["message"].encode()


def refusal(path, content_length, transfer_encoding):
    """answer(…) for a request whose headers say its body cannot be taken, else None."""
    if content_length in (None, ""):
        if transfer_encoding and transfer_encoding.strip().lower() != "identity":
            return answer(path, 411)
        return None
    try:
        declared = int(content_length)
    except ValueError:
        return None  # the server refuses a malformed length itself (400)
    limit = limit_for(path)
    if limit is not None and declared > limit:
        return answer(path, 413)
    return None


class BodyTooLarge(Exception):
    pass


class BoundedBodies:
    """ASGI middleware around Django's application: the rules above, before Django reads the body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope.get("headers", ()):
            if name in (b"content-length", b"transfer-encoding"):
                headers[name] = value.decode("latin-1")
        path = scope.get("path", "")
        refused = refusal(path, headers.get(b"content-length"), headers.get(b"transfer-encoding"))
        if refused:
            return await self._refuse(send, *refused)
        limit, received = limit_for(path), 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request" and limit is not None:
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, bounded_receive, send)
        except BodyTooLarge:  # raised while Django read the body: nothing was sent yet
            await self._refuse(send, *answer(path, 413))

    @staticmethod
    async def _refuse(send, status, content_type, body):
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class BoundedBodiesMiddleware:
    """The same rules under WSGI, as Django's first middleware (gunicorn reads a body only when asked,
    so nothing was read yet). Under ASGI, BoundedBodies has answered before this runs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        refused = refusal(request.path, request.META.get("CONTENT_LENGTH"), request.META.get("HTTP_TRANSFER_ENCODING"))
        if refused:
            from django.http import HttpResponse

            status, content_type, body = refused
            return HttpResponse(body, status=status, content_type=content_type)
        return self.get_response(request)
