"""Choosing events: the filters the API, the stream and the dashboard's feed share, and their keysets.

Filters come from a query string; a bad value raises `BadFilter` naming the parameter, which the
API answers as a 400 and the dashboard shows beside its form. Every filter is bounded (how many
names, how long a value), so a request cannot make a query of unbounded cost.

- `name`: one or more (repeated or comma-separated). A plain value is a prefix (`flow-run.state`
  matches `flow-run.state.crashed`); with `*` or `?` it is a glob over the whole name
  (`*.crashed`, `work-queue.*healthy`).
- `resource_kind`, `resource_id`: the event's resource; `related_id`: any of its related
  resources; `about`: the resource or a related one (a run page: the run's own events and its
  task runs').
- `since` / `until`: occurred ≥ since, < until (ISO 8601).

Pages of a list are keyset pages newest first on (occurred, id); the stream reads forward on
(received, id), the order in which the persister stored events.
"""

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db import connection
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL

MAX_NAMES = 10
MAX_VALUE_LENGTH = 200
_NAME = re.compile(r"^[A-Za-z0-9._:*?-]+$")
_KIND = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


class BadFilter(ValueError):
    """A filter value that cannot be used; `field` names the parameter."""

    def __init__(self, field_name, message):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass
class EventFilter:
    names: list = field(default_factory=list)
    resource_kind: str = ""
    resource_id: str = ""
    related_id: str = ""
    about: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, queryset):
        """`queryset` (of Event) narrowed to the events these filters choose."""
        if self.names:
            queryset = queryset.filter(_names_q(self.names))
        if self.resource_kind:
            queryset = queryset.filter(resource__kind=self.resource_kind)
        if self.resource_id:
            queryset = queryset.filter(resource__id=self.resource_id)
        if self.related_id:
            queryset = queryset.filter(related_has(self.related_id))
        if self.about:
            queryset = queryset.filter(Q(resource__id=self.about) | Q(related_has(self.about)))
        if self.since:
            queryset = queryset.filter(occurred__gte=self.since)
        if self.until:
            queryset = queryset.filter(occurred__lt=self.until)
        return queryset

    def query_items(self):
        """The filters as (parameter, value) pairs for a URL (the stream of a filtered page)."""
        items = [("name", name) for name in self.names]
        items += [(key, getattr(self, key)) for key in ("resource_kind", "resource_id", "related_id", "about")
                  if getattr(self, key)]
        items += [(key, getattr(self, key).isoformat()) for key in ("since", "until") if getattr(self, key)]
        return items


def _text(params, name, pattern=None, hint=""):
    raw = (params.get(name) or "").strip()
    if not raw:
        return ""
    if len(raw) > MAX_VALUE_LENGTH or "\x00" in raw or (pattern and not pattern.match(raw)):
        raise BadFilter(name, hint or f"Use at most {MAX_VALUE_LENGTH} characters.")
    return raw


def _time(params, name):
    from runs.api.filters import utc_time

    try:
        return utc_time(params.get(name))
    except ValueError as exc:
        raise BadFilter(name, str(exc)) from None


def parse(params):
    """An EventFilter from a QueryDict (or a dict of lists); raises BadFilter."""
    getlist = params.getlist if hasattr(params, "getlist") else (lambda key: params.get(key) or [])
    names = [part.strip() for value in getlist("name") for part in str(value).split(",") if part.strip()]
    if len(names) > MAX_NAMES:
        raise BadFilter("name", f"Give at most {MAX_NAMES} names or patterns.")
    for name in names:
        if len(name) > MAX_VALUE_LENGTH or not _NAME.match(name):
            raise BadFilter("name", "Use an event name, a prefix of one (flow-run.state) or a pattern with * and ? "
                                    "(*.crashed): letters, digits, '.', '-', '_', ':'.")
    result = EventFilter(
        names=list(dict.fromkeys(names)),
        resource_kind=_text(params, "resource_kind", _KIND, "Use a resource kind such as flow-run, work-queue or agent."),
        resource_id=_text(params, "resource_id"),
        related_id=_text(params, "related_id"),
        about=_text(params, "about"),
        since=_time(params, "since"),
        until=_time(params, "until"),
    )
    if result.since and result.until and result.since >= result.until:
        raise BadFilter("until", "until must be later than since.")
    return result


def _names_q(names):
    q = Q()
    for name in names:
        if "*" not in name and "?" not in name:
            q |= Q(name__startswith=name)
        elif name.endswith("*") and "*" not in name[:-1] and "?" not in name:
            q |= Q(name__startswith=name[:-1])
        else:
            pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in name)
            q |= Q(name__regex=f"^{pattern}$")
    return q


def related_has(resource_id):
    """A condition on Event rows: one of `related` has this id. JSON containment on PostgreSQL
    (jsonb @>); SQLite, which has no `contains` lookup for JSON, looks through json_each."""
    if connection.vendor == "postgresql":
        return RawSQL('"events_event"."related" @> %s::jsonb', [json.dumps([{"id": str(resource_id)}])],
                      output_field=BooleanField())
    return RawSQL("EXISTS (SELECT 1 FROM json_each(\"events_event\".\"related\") AS r "
                  "WHERE json_extract(r.value, '$.id') = %s)", [str(resource_id)], output_field=BooleanField())


# --- cursors ------------------------------------------------------------------------------------

def cursor_text(moment, event_id):
    """A cursor as the stream's `id:` and the feed's links carry it: "<ISO time>|<event uuid>"."""
    return f"{moment.isoformat()}|{event_id}"


def parse_cursor(raw, field_name):
    """(aware datetime in UTC, UUID) from `cursor_text`; raises BadFilter naming `field_name`."""
    try:
        moment_text, _, id_text = str(raw).strip().partition("|")
        if len(raw) > 100:
            raise ValueError("too long")
        moment = datetime.fromisoformat(moment_text)
        if moment.tzinfo is None:
            raise ValueError("naive")
        return moment.astimezone(dt_timezone.utc), uuid.UUID(id_text)
    except (ValueError, TypeError, OverflowError):
        raise BadFilter(field_name, "Use a cursor as given (\"<ISO time>|<event id>\").") from None


def after(queryset, moment, event_id, field_name="received"):
    """The events strictly after (moment, id) in (field, id) order. Events of one persister batch
    share their `received`; the id breaks the tie, so none of them is skipped or sent twice. The
    redundant bound (field ≥ moment) lets the database start an index range scan there."""
    return queryset.filter(**{f"{field_name}__gte": moment}).filter(
        Q(**{f"{field_name}__gt": moment}) | Q(**{field_name: moment, "id__gt": event_id}))


def before(queryset, moment, event_id, field_name="occurred"):
    """The events strictly before (moment, id) in (field, id) order (the next page, newest first)."""
    return queryset.filter(**{f"{field_name}__lte": moment}).filter(
        Q(**{f"{field_name}__lt": moment}) | Q(**{field_name: moment, "id__lt": event_id}))
