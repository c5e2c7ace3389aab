"""Live parts: the dashboard stream's URL for each part, and what each part refreshes on."""

import uuid
from urllib.parse import urlencode

from django.urls import reverse
from django.utils import timezone

from events import filters

# What each live part refreshes on (event name prefixes): a burst of heartbeats must not redraw
# pages that do not show them.
PART_EVENTS = {
    "overview": ["flow-run.state", "agent.", "service.", "work-queue."],
    "timeline": ["flow-run.state", "flow-run.rescheduled"],
    "agents": ["agent.", "work-queue."],
    "recovery": ["flow-run.state", "task-run.state", "flow-run.rescheduled"],
}


def stream_url(names=(), items=(), since=None):
    """The dashboard stream's URL for a live part: its event names, more filters (`items`), and the
    moment it starts from: `since`, when the view began to read (default now), so an event stored
    while the page was made or travelled still refreshes it."""
    query = [("name", name) for name in names] + list(items)
    query.append(("last_event_id", filters.cursor_text(since or timezone.now(), uuid.UUID(int=0))))
    return f"{reverse('dashboard:events-stream')}?{urlencode(query)}"
