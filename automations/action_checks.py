"""Checking an automation's actions before they are saved: each field named in its error
(`actions[1].url`), ids only of the automation's own workspace, URLs only http(s), templates
well-formed. `automations.actions` re-exports `validate_actions` and `destinations_missing` (the
contract the API, the admin and the trigger engine use).
"""

import re
import uuid

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from automations import messages
from runs.models import Flow, FlowRun, Schedule, Secret, WorkQueue
from runs.models.validators import SECRET_NAME_PATTERN

MAX_ACTIONS = 10
URL_MAX_CHARS = 2000
MAX_RECIPIENTS = 20
PARAMETERS_MAX_BYTES = 65_536
ADMINS = "admins"  # in an e-mail's `to`: the workspace admins' addresses


class _Fields:
    """Field errors of one action, named actions[i].field."""

    def __init__(self, index, errors):
        self.prefix, self.errors = f"actions[{index}]", errors

    def error(self, field, message):
        self.errors.setdefault(f"{self.prefix}.{field}" if field else self.prefix, []).append(message)


def _id(item, field, fields, model, lookup, workspace, what, required=False):
    """A row id of `model` in `workspace`, or None when omitted (and not `required`)."""
    raw = item.get(field)
    if raw is None or raw == "":
        if required:
            fields.error(field, f"Name the {what} by its id.")
        return None
    if model is FlowRun:
        try:
            value = str(uuid.UUID(str(raw)))
        except ValueError:
            fields.error(field, f"A {what} id is a UUID.")
            return None
    else:
        if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.isascii() and raw.isdigit())):
            fields.error(field, f"A {what} id is a whole number.")
            return None
        value = int(raw)
        if not 0 < value < 2 ** 63:
            fields.error(field, f"No {what} {raw} in this workspace.")
            return None
    if not model.objects.filter(pk=value, **{lookup: workspace.pk}).exists():
        fields.error(field, f"No {what} {raw} in this workspace.")
        return None
    return value


def _url(item, fields, required):
    url = item.get("url", "")
    if url in (None, ""):
        if required:
            fields.error("url", "Give the URL to send to.")
        return ""
    if not isinstance(url, str):
        fields.error("url", "Must be a URL (text).")
        return ""
    url = url.strip()
    scheme, _, rest = url.partition("://")
    if len(url) > URL_MAX_CHARS:
        fields.error("url", f"At most {URL_MAX_CHARS} characters.")
    elif scheme.lower() not in ("http", "https") or not rest or rest.startswith("/") or any(c.isspace() for c in url):
        fields.error("url", "Must be an http:// or https:// URL with a host, e.g. https://example.com/hook.")
    return url


def _template(item, field, fields):
    value = item.get(field)
    if value in (None, ""):
        return None
    try:
        messages.check_template(value)
    except messages.TemplateError as exc:
        fields.error(field, str(exc))
        return None
    return value


def _clean_schedule(item, workspace, fields):
    return {"schedule_id": _id(item, "schedule_id", fields, Schedule, "flow__workspace_id", workspace, "schedule")}


def _clean_queue(item, workspace, fields):
    return {"work_queue_id": _id(item, "work_queue_id", fields, WorkQueue, "workspace_id", workspace, "work queue")}


def _clean_run(item, workspace, fields):
    return {"flow_run_id": _id(item, "flow_run_id", fields, FlowRun, "workspace_id", workspace, "flow run")}


def _clean_run_flow(item, workspace, fields):
    cleaned = {"flow_id": _id(item, "flow_id", fields, Flow, "workspace_id", workspace, "flow", required=True)}
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        fields.error("parameters", 'Must be a JSON object, e.g. {"day": "monday"}.')
    elif len(messages.to_json(parameters).encode()) > PARAMETERS_MAX_BYTES:
        fields.error("parameters", f"At most {PARAMETERS_MAX_BYTES} bytes of JSON.")
    cleaned["parameters"] = parameters
    return cleaned


def _clean_webhook(item, workspace, fields):
    cleaned = {"url": _url(item, fields, required=False), "secret_name": "", "body": _template(item, "body", fields)}
    secret_name = item.get("secret_name") or ""
    if secret_name:
        if not isinstance(secret_name, str) or not re.fullmatch(SECRET_NAME_PATTERN, secret_name):
            fields.error("secret_name", "A secret's name: letters, digits and _, not first a digit.")
        elif not Secret.objects.filter(workspace_id=workspace.pk, name=secret_name).exists():
            fields.error("secret_name", f"No secret {secret_name} in this workspace; add it under Secrets first.")
        else:
            cleaned["secret_name"] = secret_name
    return cleaned


def _clean_email(item, workspace, fields):
    to = item.get("to") or []
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list):
        fields.error("to", 'A list of e-mail addresses, or "admins" for the workspace admins.')
        to = []
    if len(to) > MAX_RECIPIENTS:
        fields.error("to", f"At most {MAX_RECIPIENTS} recipients.")
    cleaned = []
    for address in to[:MAX_RECIPIENTS]:
        if address == ADMINS:
            cleaned.append(ADMINS)
            continue
        try:
            if not isinstance(address, str) or len(address) > 254:
                raise ValidationError("bad")
            validate_email(address)
        except ValidationError:
            fields.error("to", f'Not an e-mail address: {str(address)[:80]} (or use "admins").')
            continue
        cleaned.append(address)
    return {"to": list(dict.fromkeys(cleaned)), "body": _template(item, "body", fields)}


def _clean_slack(item, workspace, fields):
    return {"url": _url(item, fields, required=False), "body": _template(item, "body", fields)}


CLEANERS = {
    "pause-schedule": _clean_schedule, "resume-schedule": _clean_schedule,
    "run-flow": _clean_run_flow,
    "cancel-run": _clean_run, "mark-crashed": _clean_run,
    "pause-queue": _clean_queue, "resume-queue": _clean_queue,
    "call-webhook": _clean_webhook, "send-email": _clean_email, "post-slack": _clean_slack,
}
FIELDS = {"pause-schedule": {"schedule_id"}, "resume-schedule": {"schedule_id"}, "run-flow": {"flow_id", "parameters"},
          "cancel-run": {"flow_run_id"}, "mark-crashed": {"flow_run_id"}, "pause-queue": {"work_queue_id"},
          "resume-queue": {"work_queue_id"}, "call-webhook": {"url", "secret_name", "body"},
          "send-email": {"to", "body"}, "post-slack": {"url", "body"}}


def validate_actions(data, workspace):
    """The cleaned actions of an automation of `workspace`, or ValidationError naming each bad field."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValidationError({"actions": ["Must be a list of actions."]})
    if len(data) > MAX_ACTIONS:
        raise ValidationError({"actions": [f"At most {MAX_ACTIONS} actions."]})
    errors, cleaned = {}, []
    for index, item in enumerate(data):
        fields = _Fields(index, errors)
        if not isinstance(item, dict):
            fields.error("", 'Must be an object with a "type".')
            continue
        kind = item.get("type")
        if kind not in CLEANERS:
            fields.error("type", f"Unknown action type {str(kind)[:40]!r}; use one of {', '.join(CLEANERS)}.")
            continue
        for extra in sorted(set(item) - FIELDS[kind] - {"type"}):
            fields.error(str(extra)[:40], f"Not a field of a {kind} action (it has {', '.join(sorted(FIELDS[kind]))}).")
        cleaned.append({"type": kind, **CLEANERS[kind](item, workspace, fields)})
    if errors:
        raise ValidationError(errors)
    return cleaned


def destinations_missing(actions):
    """The fields of `actions` still waiting for a destination, e.g. ["actions[0].to"]."""
    missing = []
    for index, action in enumerate(actions or []):
        if not isinstance(action, dict):
            continue
        if action.get("type") == "send-email" and not action.get("to"):
            missing.append(f"actions[{index}].to")
        elif action.get("type") in ("call-webhook", "post-slack") and not action.get("url"):
            missing.append(f"actions[{index}].url")
    return missing
