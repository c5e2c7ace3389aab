"""Reading logs: text search, a run's download streamed in keyset chunks, and the dashboard's pages.

Every read is ordered by (timestamp, id): a line's timestamp is the agent's (or when the API
accepted it), so a list is in the order things happened even when batches were stored late.
"""

import json
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.db.models import Q

from runs.models import LogLevel

EXPORT_CHUNK = 1000  # rows per query of a download: the memory it holds at once
SEARCH_MAX_CHARS = 200
LEVEL_NAMES = dict(LogLevel.choices)
FIELDS = ("id", "timestamp", "level", "source", "flow_run_id", "task_run_id", "message")


def search(queryset, text):
    """Lines whose message contains `text`, ignoring case. PostgreSQL answers from the trigram index
    on upper(message) (migration 0014) when `text` has 3 characters or more."""
    return queryset.filter(message__icontains=text)


def after(queryset, timestamp, pk):
    """Rows strictly after (timestamp, pk) in (timestamp, id) order."""
    return queryset.filter(Q(timestamp__gt=timestamp) | Q(timestamp=timestamp, id__gt=pk))


def before(queryset, timestamp, pk):
    return queryset.filter(Q(timestamp__lt=timestamp) | Q(timestamp=timestamp, id__lt=pk))


def rows_in_order(queryset, chunk=EXPORT_CHUNK):
    """Every row of `queryset` as a dict of FIELDS, oldest first, read `chunk` rows at a time by keyset
    (no OFFSET, no server-side cursor held open across the response)."""
    last = None
    while True:
        page = queryset.order_by("timestamp", "id")
        if last is not None:
            page = after(page, *last)
        rows = list(page.values(*FIELDS)[:chunk])
        yield from rows
        if len(rows) < chunk:
            return
        last = (rows[-1]["timestamp"], rows[-1]["id"])


def _utc(moment):
    return moment.astimezone(dt_timezone.utc).isoformat().replace("+00:00", "Z")


def as_text(row):
    task = f" task={row['task_run_id']}" if row["task_run_id"] else ""
    return f"{_utc(row['timestamp'])} {LEVEL_NAMES.get(row['level'], row['level'])} {row['source']}{task} " \
           f"{row['message']}\n"


def as_ndjson(row):
    return json.dumps({"id": row["id"], "timestamp": _utc(row["timestamp"]), "level": row["level"],
                       "level_name": LEVEL_NAMES.get(row["level"], str(row["level"])), "source": row["source"],
                       "flow_run": str(row["flow_run_id"]),
                       "task_run": str(row["task_run_id"]) if row["task_run_id"] else None,
                       "message": row["message"]}, ensure_ascii=False) + "\n"


FORMATS = {"text": (as_text, "text/plain; charset=utf-8", "log"),
           "ndjson": (as_ndjson, "application/x-ndjson; charset=utf-8", "ndjson")}


def download_chunks(queryset, kind):
    """The download's body in pieces of about EXPORT_CHUNK lines (bytes), for a streaming response."""
    render = FORMATS[kind][0]
    piece = []
    for row in rows_in_order(queryset):
        piece.append(render(row))
        if len(piece) >= EXPORT_CHUNK:
            yield "".join(piece).encode("utf-8", "replace")
            piece = []
    if piece:
        yield "".join(piece).encode("utf-8", "replace")


def download_response(queryset, kind, run_id):
    from django.http import StreamingHttpResponse

    _, content_type, extension = FORMATS[kind]
    response = StreamingHttpResponse(download_chunks(queryset, kind), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="run-{run_id}-logs.{extension}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "no-store"
    return response


def encode_cursor(row):
    """A dashboard page cursor: microseconds since the epoch and the id (exact, unlike a float)."""
    delta = row.timestamp - datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
    return f"{(delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds}.{row.pk}"


def decode_cursor(raw):
    """(timestamp, id) from encode_cursor's text, or None when it is not one."""
    try:
        micros, pk = raw.split(".")
        if not (micros.isascii() and micros.lstrip("-").isdigit() and pk.isascii() and pk.isdigit()) \
                or len(micros) > 20 or len(pk) > 20:
            return None
        moment = datetime(1970, 1, 1, tzinfo=dt_timezone.utc) + timedelta(microseconds=int(micros))
        return moment, int(pk)
    except (ValueError, OverflowError, AttributeError):
        return None


def run_page(queryset, *, older_than=None, newer_than=None, size=100):
    """One page of a run's lines, oldest first, with cursors to the pages around it.

    No cursor: the newest `size` lines (a tail). `older_than`/`newer_than` (decoded cursors): the
    `size` lines just before / after that line. Returns {"logs", "older", "newer"}, the cursors None
    where there is nothing more that way.
    """
    if newer_than is not None:
        rows = list(after(queryset, *newer_than).order_by("timestamp", "id")[:size + 1])
        more_newer, rows = len(rows) > size, rows[:size]
        more_older = True  # the line the cursor names, at least
    else:
        page = before(queryset, *older_than) if older_than is not None else queryset
        rows = list(page.order_by("-timestamp", "-id")[:size + 1])
        more_older, rows = len(rows) > size, rows[:size][::-1]
        more_newer = older_than is not None
    return {"logs": rows,
            "older": encode_cursor(rows[0]) if rows and more_older else None,
            "newer": encode_cursor(rows[-1]) if rows and more_newer else None}
