"""What an automation's outgoing messages say: the firing as a JSON document, and a small safe
template language over it.

The document (`firing_document`) is the default body of a webhook:
{"automation": {"id", "name"}, "workspace": {"id", "name"}, "firing": {"id"}, "fired": ISO time,
 "reason": str, "resource": dict or null, "events": [Event.as_dict(), …] (at most MAX_EVENTS)}.

A template (`render`) is text with `{{ path }}` placeholders, where `path` is dotted into that
document (`automation.name`, `events.0.resource.id`); `{{ path|json }}` writes the value as JSON
(a string quoted and escaped), which is what a JSON body template wants. A missing path renders
empty. No Jinja, no eval: a path only looks up keys and list indexes. Everything is bounded: the
template's length, a path's depth, and the output (OUTPUT_MAX_BYTES; longer output is cut).
"""

import json
import re

from django.core.serializers.json import DjangoJSONEncoder

MAX_EVENTS = 20
TEMPLATE_MAX_CHARS = 20_000
PATH_MAX_PARTS = 10
OUTPUT_MAX_BYTES = 65_536
MISSING = object()

PLACEHOLDER = re.compile(r"\{\{\s*([^{}|\s]{1,200})\s*(\|\s*json\s*)?\}\}")
PART = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")


class TemplateError(ValueError):
    """A template that cannot be accepted (said in words for a field error)."""


def check_template(template):
    """Raise TemplateError when `template` is not a string of at most TEMPLATE_MAX_CHARS whose
    placeholders are well-formed paths."""
    if not isinstance(template, str):
        raise TemplateError("Must be a string with {{ path }} placeholders.")
    if len(template) > TEMPLATE_MAX_CHARS:
        raise TemplateError(f"At most {TEMPLATE_MAX_CHARS} characters.")
    for match in PLACEHOLDER.finditer(template):
        parts = match[1].split(".")
        if len(parts) > PATH_MAX_PARTS:
            raise TemplateError(f"{{{{ {match[1]} }}}} is deeper than {PATH_MAX_PARTS} parts.")
        if not all(PART.match(part) for part in parts):
            raise TemplateError(f"{{{{ {match[1]} }}}} is not a dotted path (letters, digits, _ and -).")


def lookup(document, path):
    """The value at dotted `path` in `document`, or MISSING."""
    value = document
    parts = path.split(".")
    if len(parts) > PATH_MAX_PARTS:
        return MISSING
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def as_text(value, as_json=False):
    if value is MISSING:
        return "null" if as_json else ""
    if as_json:
        return to_json(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return to_json(value)


def to_json(value):
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":"))


def cut(text, max_bytes=OUTPUT_MAX_BYTES):
    """`text` cut to at most `max_bytes` of UTF-8 (never inside a character)."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode(errors="ignore")


def render(template, document, max_bytes=OUTPUT_MAX_BYTES):
    """`template` with its placeholders filled from `document`; at most `max_bytes` of UTF-8."""
    check_template(template)
    pieces, size, position = [], 0, 0
    for match in PLACEHOLDER.finditer(template):
        for piece in (template[position:match.start()], as_text(lookup(document, match[1]), bool(match[2]))):
            pieces.append(piece)
            size += len(piece.encode())
            if size > max_bytes:  # stop building as soon as the bound is passed
                return cut("".join(pieces), max_bytes)
        position = match.end()
    pieces.append(template[position:])
    return cut("".join(pieces), max_bytes)


def firing_document(automation, firing, context):
    """The firing as the webhook body and the templates see it (see the module's docstring)."""
    events = list(context.get("events") or [])[-MAX_EVENTS:]
    workspace = automation.workspace
    return {
        "automation": {"id": automation.pk, "name": automation.name},
        "workspace": {"id": workspace.pk, "name": workspace.name},
        "firing": {"id": getattr(firing, "pk", None)},
        "fired": firing.fired.isoformat() if getattr(firing, "fired", None) else None,
        "reason": context.get("reason") or getattr(firing, "reason", "") or "",
        "resource": context.get("resource") or None,
        "events": [event.as_dict() if hasattr(event, "as_dict") else event for event in events],
    }


def summary_text(document):
    """A few lines a person reads in an e-mail or a chat message."""
    lines = [f'Automation "{document["automation"]["name"]}" fired at {document["fired"]} '
             f'in workspace {document["workspace"]["name"]}.']
    if document["reason"]:
        lines.append(f"Why: {document['reason']}")
    resource = document["resource"]
    if resource:
        lines.append(f"About: {resource.get('kind', '?')} {resource.get('name') or resource.get('id', '')}".rstrip())
    events = document["events"]
    if events:
        lines.append(f"Events ({len(events)}):")
        for event in events[-5:]:
            about = event.get("resource") or {}
            lines.append(f"- {event.get('occurred', '')} {event.get('name', '')} "
                         f"{about.get('kind', '')} {about.get('name') or about.get('id', '')}".rstrip())
    return "\n".join(lines)


def json_document(document, max_bytes=OUTPUT_MAX_BYTES):
    """`document` as JSON of at most `max_bytes`: the oldest events are left out until it fits, so
    the body stays valid JSON (a huge reason or resource alone is cut as text)."""
    document = dict(document)
    events = list(document.get("events") or [])
    while True:
        text = to_json({**document, "events": events})
        if len(text.encode()) <= max_bytes or not events:
            return cut(text, max_bytes)
        events = events[1:]


def shown_url(url, hide_path=False):
    """A URL as pages and results show it: no query or credentials (they may hold tokens), and with
    `hide_path` no path either (a Slack webhook's path is its secret)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return url[:40] + "…"
    if hide_path:
        return f"{parts.scheme}://{host}/…"
    shown = f"{parts.scheme}://{host}{parts.path}"
    return (shown[:120] + "…") if len(shown) > 120 else shown + ("?…" if parts.query else "")


def shown_target(kind, target):
    """A delivery's target as the log shows it (see `shown_url`); e-mail addresses as they are."""
    if kind == "email":
        return target
    return shown_url(target, hide_path=(kind == "slack"))


def shown_actions(actions):
    """An automation's actions as people who may not edit them read them: destinations as the
    delivery log shows them (a Slack-compatible URL without its path, a webhook's without query
    string or user info)."""
    if not isinstance(actions, list):
        return actions
    return [{**action, "url": shown_url(action["url"], hide_path=action.get("type") == "post-slack")}
            if isinstance(action, dict) and isinstance(action.get("url"), str) and action["url"] else action
            for action in actions]
