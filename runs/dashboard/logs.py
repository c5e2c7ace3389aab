"""A run's logs on its dashboard page: text search, level, keyset pages, and a download.

The page's log section (templates/dashboard/_run_logs.html) is one partial with two uses: the run
page includes it, and the search box and page links fetch it alone with htmx (without JavaScript
they reload the run page with the same query string).
"""

from django.http import Http404
from django.shortcuts import render
from django.utils.http import urlencode

from runs.access import scoped
from runs.logs import reading
from runs.models import FlowRun, LogLevel

from .views import dashboard_login_required, int_param

PAGE_SIZE = 100


def _run(request, pk):
    run = scoped(request, FlowRun.objects.alive()).filter(pk=pk).select_related("workspace").first()
    if run is None:
        raise Http404("No such run.")
    return run


def _filters(request):
    """(level, text) from the query string; a text past SEARCH_MAX_CHARS is cut, not refused (a page)."""
    level = int_param(request, "level", LogLevel.DEBUG, set(LogLevel.values))
    text = request.GET.get("q", "").replace("\x00", "")[:reading.SEARCH_MAX_CHARS].strip()
    return level, text


def _lines(run, level, text, window=None):
    queryset = run.logs.filter(level__gte=level)
    if window:  # one attempt's lines: written from its start until the next attempt began
        start, end = window
        queryset = queryset.filter(timestamp__gte=start)
        if end is not None:
            queryset = queryset.filter(timestamp__lt=end)
    return reading.search(queryset, text) if text else queryset


def attempt_window(request, run, attempts=None):
    """(attempt number, (start, end)) of the attempt the query string names, or (None, None).
    `attempts`: the run's, when the caller has them already (the run page)."""
    number = int_param(request, "attempt")
    if not number:
        return None, None
    if attempts is None:
        from .attempts import attempts_of
        from .queries import run_history

        attempts = attempts_of(run, run_history(run))
    attempt = next((a for a in attempts if a.number == number), None)
    return (number, (attempt.start, attempt.end)) if attempt else (None, None)


def log_context(request, run, attempts=None):
    """What _run_logs.html shows: one page of the run's lines (of one attempt's, with `attempt`)
    and the links around it."""
    level, text = _filters(request)
    attempt, window = attempt_window(request, run, attempts)
    older = reading.decode_cursor(request.GET.get("before", ""))
    newer = None if older else reading.decode_cursor(request.GET.get("after", ""))
    page = reading.run_page(_lines(run, level, text, window), older_than=older, newer_than=newer, size=PAGE_SIZE)
    base = {"level": level} if level != LogLevel.DEBUG else {}
    if attempt:
        base["attempt"] = attempt
    if text:
        base["q"] = text
    return {
        "logs": page["logs"], "level": level, "levels": LogLevel.choices, "q": text,
        "older_query": urlencode({**base, "before": page["older"]}) if page["older"] else None,
        "newer_query": urlencode({**base, "after": page["newer"]}) if page["newer"] else None,
        "newest_query": urlencode(base) if (older or newer) else None,
        "filter_query": urlencode(base),
        "tail": not (older or newer),  # the newest page follows new lines; a page further back stays put
    }


@dashboard_login_required
def run_logs(request, pk):
    """The log section alone (htmx: search, level, pages)."""
    run = _run(request, pk)
    return render(request, "dashboard/_run_logs.html", {"run": run, **log_context(request, run)})


@dashboard_login_required
def download(request, pk):
    """The run's lines (with the page's level and search) as a file, streamed."""
    run = _run(request, pk)
    kind = request.GET.get("as", "text")
    if kind not in reading.FORMATS:
        kind = "text"
    level, text = _filters(request)
    return reading.download_response(_lines(run, level, text, attempt_window(request, run)[1]), kind, run.pk)
