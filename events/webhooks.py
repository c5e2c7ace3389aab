"""Incoming webhooks: POST /hooks/<slug> turns a body into an event of the webhook's workspace.

The answer is 202 with the event's id once the event is handed to the buffer (events/emit.py):
404 for an unknown or disabled slug, 413 for a body over WEBHOOK_MAX_BODY_BYTES, 429 past
WEBHOOK_THROTTLE_RATE per webhook, 401 for a missing or wrong signature when the webhook has a
secret, 400 for a body that is not JSON (or a form) or a template that cannot be rendered from
it, naming the problem. No session, no CSRF: the slug (and the signature) are the credentials.

Signature: `X-Orchestrator-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body keyed with
the value of the workspace secret `secret_name`.

Templates are JSON in which strings may hold `{{ path }}` placeholders: a dotted path from
`body` (the parsed body) or `webhook` (its id and name), list items by index (`body.items.0`).
A string that is exactly one placeholder becomes the value itself (an object stays an object);
otherwise each placeholder is replaced by its text. Nothing is evaluated, and every bound is
fixed: template size, depth and placeholders when saved, the rendered event's size when used.
"""

import hashlib
import hmac
import json
import logging
import re
import time

from django.conf import settings
from django.core.cache import cache
from django.http import JsonResponse, QueryDict
from django.utils.text import slugify
from django.views.decorators.csrf import csrf_exempt

from events.emit import emit, make, resource

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Orchestrator-Signature"
TEMPLATE_KEYS = {"name", "resource", "payload"}
WEBHOOK_PREFIX = "webhook."
TEMPLATE_MAX_BYTES = 16_384
TEMPLATE_MAX_DEPTH = 8
TEMPLATE_MAX_PLACEHOLDERS = 64
PATH_MAX_PARTS = 32
EVENT_MAX_BYTES = 1_048_576  # the rendered event, as JSON
ROOTS = ("body", "webhook")
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*$")
EVENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


class TemplateError(ValueError):
    """A template that cannot be saved, or cannot be rendered from a body; the text says why."""


# --- templates ---------------------------------------------------------------------------------

def _placeholders(template):
    """Every placeholder path in the template's strings; refuses depth past the bound (no recursion)."""
    paths, pending = [], [(template, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > TEMPLATE_MAX_DEPTH:
            raise TemplateError(f"The template nests more than {TEMPLATE_MAX_DEPTH} levels deep.")
        if isinstance(node, dict):
            pending.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            pending.extend((value, depth + 1) for value in node)
        elif isinstance(node, str):
            paths.extend(PLACEHOLDER.findall(node))
    return paths


def check_template(template):
    """Refuse a template that could not be rendered safely (TemplateError naming the problem)."""
    if template in (None, {}):
        return
    if not isinstance(template, dict):
        raise TemplateError("The template must be a JSON object with name, resource and payload.")
    unknown = set(template) - TEMPLATE_KEYS
    if unknown:
        raise TemplateError(f"Unknown template keys: {', '.join(sorted(unknown))}; use name, resource and payload.")
    if len(json.dumps(template)) > TEMPLATE_MAX_BYTES:
        raise TemplateError(f"The template is larger than {TEMPLATE_MAX_BYTES} bytes.")
    if "name" in template and not isinstance(template["name"], str):
        raise TemplateError("template.name must be a string, e.g. \"webhook.{{ body.kind }}\".")
    if "resource" in template and not isinstance(template["resource"], (dict, str)):
        raise TemplateError('template.resource must be an object, e.g. {"kind": "deploy", "id": "{{ body.id }}"}.')
    paths = _placeholders(template)
    if len(paths) > TEMPLATE_MAX_PLACEHOLDERS:
        raise TemplateError(f"The template has {len(paths)} placeholders; at most {TEMPLATE_MAX_PLACEHOLDERS}.")
    for path in paths:
        if not PATH.match(path) or path.count(".") >= PATH_MAX_PARTS:
            raise TemplateError(f"{{{{ {path} }}}} is not a dotted path (at most {PATH_MAX_PARTS} parts), "
                                "e.g. {{ body.repository.name }}.")
        if path.split(".", 1)[0] not in ROOTS:
            raise TemplateError(f"{{{{ {path} }}}} must start with body or webhook.")


def lookup(context, path):
    """The value at a dotted path, or TemplateError naming where it stops."""
    parts = path.split(".")
    value = context[parts[0]]
    for i, part in enumerate(parts[1:], start=1):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{ {path} }}}}: {'.'.join(parts[:i])} has no {part!r}.")
    return value


def _as_text(value):
    return value if isinstance(value, str) else json.dumps(value)


def _render_string(text, context):
    whole = PLACEHOLDER.fullmatch(text)
    if whole:
        return lookup(context, whole[1])
    return PLACEHOLDER.sub(lambda match: _as_text(lookup(context, match[1])), text)


def render(template, context):
    """The template with its placeholders filled from `context` (bounded by check_template)."""
    if isinstance(template, dict):
        return {key: render(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [render(value, context) for value in template]
    if isinstance(template, str):
        return _render_string(template, context)
    return template


def default_template(webhook):
    return {"name": f"webhook.{slugify(webhook.name) or 'incoming'}", "payload": "{{ body }}"}


def event_for(webhook, body):
    """The event (events.emit.make) that `body` becomes through the webhook's template."""
    check_template(webhook.template)  # a template saved before a bound existed
    template = {**default_template(webhook), **(webhook.template or {})}
    own = resource("webhook", webhook.pk, webhook.name)
    rendered = render(template, {"body": body, "webhook": {"id": str(webhook.pk), "name": webhook.name}})
    name = rendered.get("name")
    if isinstance(name, str) and not name.startswith(WEBHOOK_PREFIX):
        # The server's own names (flow-run.heartbeat, automation.fired, …) cannot come from outside:
        # a webhook's URL holder could otherwise crash runs through the heartbeat default, or reset
        # automations' loop guard. Its events are always webhook.<…>.
        name = WEBHOOK_PREFIX + name
    if not isinstance(name, str) or not EVENT_NAME.match(name):
        raise TemplateError(f"template.name rendered to {str(name)[:100]!r}: an event name is 1-200 letters, digits, "
                            "'.', ':', '-' and '_'.")
    related = []
    if "resource" in template:
        given = rendered["resource"]
        if not isinstance(given, dict) or not given.get("kind") or given.get("id") in (None, ""):
            raise TemplateError("template.resource must render to an object with a kind and an id.")
        if any(isinstance(given.get(key), (dict, list)) for key in ("kind", "id", "name")):
            raise TemplateError("template.resource's kind, id and name must render to text.")
        subject = resource(str(given["kind"])[:100], str(given["id"])[:200],
                           str(given["name"])[:200] if given.get("name") else None)
        related = [own]
    else:
        subject = own
    payload = rendered.get("payload", {})
    if not isinstance(payload, dict):
        payload = {"body": payload}
    event = make(webhook.workspace_id, name, subject, related=related, payload=payload)
    if len(json.dumps(event)) > EVENT_MAX_BYTES:
        raise TemplateError(f"The rendered event is larger than {EVENT_MAX_BYTES} bytes.")
    return event


# --- the request ---------------------------------------------------------------------------------

def signature(secret, body):
    """The header value a sender puts on `body` (bytes): sha256=<hex>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _signed(webhook, request, body):
    from runs.models import secret_values

    value = secret_values(webhook.workspace_id, [webhook.secret_name]).get(webhook.secret_name)
    if value is None:
        logger.error("Webhook %s (workspace %s) needs the secret %s, which is missing or cannot be decrypted; "
                     "its requests are refused.", webhook.pk, webhook.workspace_id, webhook.secret_name)
        return False
    given = request.headers.get(SIGNATURE_HEADER, "")
    return hmac.compare_digest(given.strip().encode(), signature(value, body).encode())


def _throttled(webhook):
    """Whether this request is past the webhook's rate (a fixed window in the cache; fails open)."""
    from runs.api.throttles import _parse_rate, counter_cache

    count, seconds = _parse_rate(settings.ORCHESTRATOR["WEBHOOK_THROTTLE_RATE"])
    if count is None:
        return False
    key = f"webhook-rate:{webhook.slug}:{int(time.time() // seconds)}"

    def hit():
        cache.add(key, 0, seconds + 1)
        try:
            return cache.incr(key)
        except ValueError:  # evicted between the two calls
            cache.set(key, 1, seconds + 1)
            return 1

    return counter_cache.call(hit, 0) > count


def _body(request, raw):
    """The parsed body: JSON, or a form's fields (one value: text; several: a list)."""
    from rest_framework.exceptions import ParseError

    from runs.api.parsers import loads, refusal

    if request.content_type == "application/x-www-form-urlencoded":
        try:
            form = QueryDict(raw, encoding=request.encoding or "utf-8")
        except Exception as exc:  # noqa: BLE001 - a form that cannot be read is the sender's error
            raise TemplateError(f"The form body cannot be read: {exc}") from None
        problem = refusal(form)
        if problem:
            raise TemplateError(problem)
        return {key: values[0] if len(values) == 1 else values for key, values in form.lists()}
    if not raw.strip():
        return {}
    try:
        return loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TemplateError(f"The body is not UTF-8: {exc}") from None
    except ParseError as exc:
        raise TemplateError(f"The body is not JSON: {exc.detail}") from None
    except ValueError as exc:
        raise TemplateError(f"The body is not JSON: {exc}") from None


def too_large_detail():
    limit = settings.ORCHESTRATOR["WEBHOOK_MAX_BODY_BYTES"]
    return f"The body is larger than {limit} bytes (ORCHESTRATOR_WEBHOOK_MAX_BODY_BYTES)."


def _answer(status, detail, **extra):
    return JsonResponse({"detail": detail, **extra}, status=status)


@csrf_exempt
def receive(request, slug):
    """POST /hooks/<slug>: the body becomes an event; 202 with its id."""
    from events.models import IncomingWebhook

    if request.method != "POST":
        answer = _answer(405, "POST a JSON (or form) body to this URL.")
        answer["Allow"] = "POST"
        return answer
    # A slug is at most 64 characters; a NUL would be a 500 on PostgreSQL (text refuses it).
    webhook = (IncomingWebhook.objects.filter(slug=slug, enabled=True).first()
               if len(slug) <= 64 and "\x00" not in slug else None)
    if webhook is None:
        return _answer(404, "No such webhook.")
    limit = settings.ORCHESTRATOR["WEBHOOK_MAX_BODY_BYTES"]
    too_big = _answer(413, too_large_detail())
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return too_big
    raw = request.read(limit + 1)
    if len(raw) > limit:
        return too_big
    if _throttled(webhook):
        return _answer(429, "Too many requests for this webhook; try again later.")
    if webhook.secret_name and not _signed(webhook, request, raw):
        return _answer(401, f"The {SIGNATURE_HEADER} header is missing or does not match the body "
                            "(sha256=<hex HMAC-SHA256 of the body with the webhook's secret>).")
    try:
        event = event_for(webhook, _body(request, raw))
    except TemplateError as exc:
        return _answer(400, str(exc))
    emit([event])
    return JsonResponse({"id": event["id"], "name": event["name"]}, status=202)
