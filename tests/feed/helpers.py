"""Making events directly in the table, and reading a server-sent-events answer."""

import json
from datetime import timedelta

from django.utils import timezone

from events.models import Event


def event(ws, name="flow-run.state.crashed", *, kind="flow-run", rid="r-1", related=(), occurred=None, received=None,
          payload=None):
    occurred = occurred or timezone.now()
    return Event.objects.create(workspace=ws, name=name, resource={"kind": kind, "id": str(rid)},
                                related=[{"kind": k, "id": str(i)} for k, i in related], payload=payload or {},
                                occurred=occurred, received=received or occurred + timedelta(milliseconds=5))


def parse_sse(text):
    """The messages of an SSE text: dicts of their fields (data parsed as JSON when it is), and
    comments under ':'."""
    messages = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        message = {}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                message.setdefault(":", []).append(value)
            elif field == "data":
                try:
                    message["data"] = json.loads(value)
                except ValueError:
                    message["data"] = value
            else:
                message[field] = value
        messages.append(message)
    return messages
