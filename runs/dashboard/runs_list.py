"""The runs list: every run the person may see, filtered by what the URL says (so a filtered view
can be bookmarked and shared), newest first in keyset pages, with counts per state.

A page costs a fixed number of queries whatever the number of runs: the rows (one more than a
page, to know whether there is a next), one grouped count, and the choices of the filters.
"""

import base64
import binascii
import uuid
from datetime import datetime, timezone as dt_timezone

from django.db.models import Q
from django.shortcuts import render
from django.utils import timezone

from runs.access import scoped
from runs.models import Agent, Flow, FlowRun, Schedule, State, WorkQueue

from .run_actions import ACTIONS, BULK_LIMIT
from .views import dashboard_login_required

PAGE_SIZE = 50
CHOICES_LIMIT = 500
# Counts per state stop here ("1,000+"): each is an index range read of at most this many rows,
# so the page costs the same with a thousand runs or ten million.
COUNT_CAP = 1000
# A text search reads the newest this many runs that match the other filters, not the whole table.
TEXT_SEARCH_SCOPE = 10_000
TIME_FORMAT = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> sends


class Filters:
    """The filters of the URL, checked: each bad value becomes an error naming the field, and the
    filter is left out instead of failing the page."""

    def __init__(self, params):
        self.errors = {}
        self.states = [s for s in params.getlist("state") if s in State.values]
        bad_states = [s for s in params.getlist("state") if s and s not in State.values]
        if bad_states:
            self.errors["state"] = f"Unknown state {bad_states[0]!r}."
        self.ids = {name: self._int(params, name) for name in ("flow", "schedule", "queue", "agent")}
        self.since = self._time(params, "since")
        self.until = self._time(params, "until")
        self.q = params.get("q", "").strip()[:200]
        self._scope_edges = {}  # with a state filter or not: the oldest (due time, id) of the text search's scope

    def _int(self, params, name):
        raw = params.get(name, "").strip()
        if not raw:
            return None
        if raw.isascii() and raw.isdigit() and len(raw) < 12:
            return int(raw)
        self.errors[name] = f"{name} must be an id from the list."
        return None

    def _time(self, params, name):
        raw = params.get(name, "").strip()
        if not raw:
            return None
        try:
            return datetime.strptime(raw[:16], TIME_FORMAT).replace(tzinfo=dt_timezone.utc)
        except ValueError:
            self.errors[name] = f"{name} must be a date and time such as 2026-12-07T08:30 (UTC)."
            return None

    def apply(self, runs, with_state=True):
        if with_state and self.states:
            runs = runs.filter(state__in=self.states)
        for name, field in (("flow", "flow_id"), ("schedule", "schedule_id"), ("queue", "work_queue_id"),
                            ("agent", "agent_id")):
            if self.ids[name] is not None:
                runs = runs.filter(**{field: self.ids[name]})
        if self.since:
            runs = runs.filter(scheduled_start__gte=self.since)
        if self.until:
            runs = runs.filter(scheduled_start__lt=self.until)
        if self.q:
            try:
                runs = runs.filter(pk=uuid.UUID(self.q))
            except ValueError:
                runs = self._in_text_scope(runs, with_state).filter(
                    Q(name__icontains=self.q) | Q(flow__name__icontains=self.q) | Q(state_message__icontains=self.q))
        return runs

    def _in_text_scope(self, runs, with_state):
        """`runs` cut to the newest TEXT_SEARCH_SCOPE of them, as a range of due times.

        The oldest run of the scope is looked up first (one query, remembered for the counts when
        they have the same filters), so the search is an index range read of the scope: as `pk IN
        (the newest ids)` PostgreSQL read the whole table and joined it to the ids (0.6 s a query
        at a million runs)."""
        key = with_state and bool(self.states)
        if key not in self._scope_edges:
            oldest = runs.order_by("-scheduled_start", "-id").values_list("scheduled_start", "id")
            self._scope_edges[key] = next(iter(oldest[TEXT_SEARCH_SCOPE - 1:TEXT_SEARCH_SCOPE]), None)
        edge = self._scope_edges[key]
        if edge is None:  # fewer runs than the scope: all of them
            return runs
        moment, pk = edge
        return runs.filter(scheduled_start__gte=moment).filter(Q(scheduled_start__gt=moment) | Q(id__gte=pk))

    def as_form(self):
        return {"states": self.states, **{k: v for k, v in self.ids.items()}, "q": self.q,
                "since": self.since.strftime(TIME_FORMAT) if self.since else "",
                "until": self.until.strftime(TIME_FORMAT) if self.until else ""}


def encode_cursor(run):
    return base64.urlsafe_b64encode(f"{run.scheduled_start.isoformat()}|{run.pk}".encode()).decode().rstrip("=")


def decode_cursor(raw):
    """(scheduled_start, id) of the last run of the page before, or None for a bad or no cursor."""
    if not raw:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        moment, pk = text.split("|", 1)
        return datetime.fromisoformat(moment), uuid.UUID(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def page_of(runs, cursor):
    ordered = runs.order_by("-scheduled_start", "-id")
    if cursor:
        moment, pk = cursor
        ordered = ordered.filter(Q(scheduled_start__lt=moment) | Q(scheduled_start=moment, id__lt=pk))
    rows = list(ordered.select_related("flow", "schedule", "work_queue", "agent")[:PAGE_SIZE + 1])
    return rows[:PAGE_SIZE], (encode_cursor(rows[PAGE_SIZE - 1]) if len(rows) > PAGE_SIZE else None)


@dashboard_login_required
def run_list(request):
    filters = Filters(request.GET)
    visible = scoped(request, FlowRun.objects.listed())
    matching = filters.apply(visible)
    cursor_raw = request.GET.get("cursor", "")
    cursor = decode_cursor(cursor_raw)
    runs, next_cursor = page_of(matching, cursor)
    unstated = filters.apply(visible, with_state=False).order_by()
    counts = {state: unstated.filter(state=state)[:COUNT_CAP + 1].count() for state in State.values}
    query = request.GET.copy()
    query.pop("cursor", None)
    state_links = []
    for state in State:
        linked = query.copy()
        linked.setlist("state", [state.value])
        count = counts.get(state.value, 0)
        state_links.append({"state": state.value, "count": min(count, COUNT_CAP), "more": count > COUNT_CAP,
                            "query": linked.urlencode(), "current": filters.states == [state.value]})
    context = {
        "nav": "runs", "now": timezone.now(), "runs": runs, "filters": filters.as_form(), "errors": filters.errors,
        "state_links": state_links, "total": sum(min(counts.get(s, 0), COUNT_CAP) for s in (filters.states or State.values)),
        "total_more": any(counts.get(s, 0) > COUNT_CAP for s in (filters.states or State.values)),
        "text_scope": TEXT_SEARCH_SCOPE if filters.q else None, "count_cap": COUNT_CAP,
        "next_query": f"{query.urlencode()}&cursor={next_cursor}" if next_cursor else None,
        "first_query": query.urlencode() if cursor_raw else None,
        "bad_cursor": bool(cursor_raw) and cursor is None,
        "states": State.values, "actions": ACTIONS.values(), "bulk_limit": BULK_LIMIT,
        "flows": scoped(request, Flow.objects.order_by("name")).only("id", "name")[:CHOICES_LIMIT],
        "schedules": scoped(request, Schedule.objects.select_related("flow").order_by("flow__name", "slug"),
                            "flow__workspace_id").only("id", "slug", "flow__name")[:CHOICES_LIMIT],
        "queues": scoped(request, WorkQueue.objects.order_by("name")).only("id", "name")[:CHOICES_LIMIT],
        "agents": scoped(request, Agent.objects.order_by("name")).only("id", "name")[:CHOICES_LIMIT],
        "here": request.get_full_path(),
    }
    return render(request, "dashboard/runs.html", context, status=400 if filters.errors else 200)
