"""The event feed, and the stream that keeps every live part of the dashboard fresh.

The feed (`/dashboard/events/`) lists the events of the user's workspaces newest first, filtered
by a GET form (works without JavaScript), in keyset pages ("older" follows the last row). Each
event links to its resource's page where the dashboard has one.

`/dashboard/events/stream` is the session-authenticated twin of the API's stream
(events/stream.py) in its `coalesce` mode: one `changed` message per read that found events of
the page's interest. Each live part listens with `hx-trigger="sse:changed, every 15s"`: it
refreshes when something happened, at most once per read (EVENTS_STREAM_POLL_SECONDS), and every
15 s anyway, which is also the fallback while the stream is down.
"""

import uuid
from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.urls import reverse
from django.utils import timezone

from events import filters, stream
from events.models import Event
from runs.access import scoped

from .live import stream_url
from .views import render_live

PAGE_ROWS = 50
# The feed's time windows, in hours.
WINDOWS = ((1, "1 hour"), (6, "6 hours"), (24, "24 hours"), (168, "7 days"), (720, "30 days"))
DEFAULT_WINDOW = 24
KINDS = ("flow-run", "task-run", "flow", "schedule", "work-queue", "agent", "service", "webhook", "automation")

def resource_link(event):
    """The dashboard page of an event's resource, or None: a flow run's page (a task run's: its flow
    run's), the agents page for agents and queues, the schedules page for schedules."""
    kind, rid = event.resource_kind, event.resource_id
    if kind == "task-run":
        rid = next((str(r.get("id", "")) for r in event.related or [] if isinstance(r, dict)
                    and r.get("kind") == "flow-run"), "")
        kind = "flow-run"
    if kind == "flow-run":
        try:
            return reverse("dashboard:run", args=[uuid.UUID(rid)])
        except ValueError:
            return None
    if kind in ("agent", "work-queue"):
        return reverse("dashboard:agents")
    if kind == "schedule" and rid.isdigit():
        return f"{reverse('dashboard:schedules')}#schedule-{rid}"
    return None


def _window(request):
    try:
        hours = int(request.GET.get("hours", DEFAULT_WINDOW))
    except ValueError:
        return DEFAULT_WINDOW
    return hours if hours in dict(WINDOWS) else DEFAULT_WINDOW


@login_required(login_url="dashboard:login")
def feed(request):
    """The event feed: newest first, filtered, in pages of PAGE_ROWS."""
    now = timezone.now()
    hours = _window(request)
    problem = None
    try:
        chosen = filters.parse(request.GET)
        page_cursor = request.GET.get("before", "").strip()
        older_than = filters.parse_cursor(page_cursor, "before") if page_cursor else None
    except filters.BadFilter as exc:
        problem, chosen, older_than, page_cursor = exc, filters.EventFilter(), None, ""
    chosen.since = max(chosen.since or now - timedelta(hours=hours), now - timedelta(hours=hours))
    events = chosen.apply(scoped(request, Event.objects.all()))
    if older_than:
        events = filters.before(events, *older_than)
    rows = list(events.select_related("workspace__account").order_by("-occurred", "-id")[: PAGE_ROWS + 1])
    more = len(rows) > PAGE_ROWS
    rows = rows[:PAGE_ROWS]
    older = None
    if more:
        query = request.GET.copy()
        query["before"] = filters.cursor_text(rows[-1].occurred, rows[-1].id)
        older = f"{reverse('dashboard:events')}?{query.urlencode()}"
    live_items = [(k, v) for k, v in chosen.query_items() if k != "since"]
    context = {
        "nav": "events", "now": now, "rows": [{"event": e, "link": resource_link(e)} for e in rows],
        "older": older, "paged": bool(page_cursor), "problem": problem, "windows": WINDOWS, "hours": hours,
        "kinds": KINDS, "name": request.GET.get("name", "") if not problem else "",
        "resource_kind": chosen.resource_kind, "resource_id": chosen.resource_id,
        # Only the first page is live: an older page stays as it was asked for.
        "stream_url": None if page_cursor else stream_url(items=live_items, since=now),
    }
    return render_live(request, "dashboard/events.html", "dashboard/_events_live.html", context)


def events_stream(request):
    """The dashboard's live feed: `changed` messages for events of the user's workspaces (session)."""
    if not request.user.is_authenticated:
        return HttpResponse("Log in first.", status=403, content_type="text/plain")
    try:
        chosen = filters.parse(request.GET)
        cursor = stream.start_cursor(request)
    except filters.BadFilter as exc:
        return JsonResponse({"error": {"code": "invalid", "message": str(exc), "fields": {exc.field: [exc.message]}}},
                            status=400)
    events = chosen.apply(scoped(request, Event.objects.all()))
    return stream.response_for(request, stream.EventStream(events, cursor, coalesce=True))
