"""The rows of the dashboard's long lists as HTML, built in Python: the timeline's bars and
scatter dots, a run's Gantt of task runs, the recovery review's acts.

A timeline window shows up to 300 bars and 300 dots, a Gantt and the review up to 200 rows; drawn by the
template language, each row costs some twenty variable lookups and filters, and that rendering
was most of those pages' time at a million runs (issue 15's budget: within 5× of the empty page).
The markup is the one the templates wrote (they keep the rest of the page); every value is
escaped here.
"""

from django.utils.html import escape
from django.utils.safestring import mark_safe

from runs.templatetags.dashboard import run_url, task_run_url

LABEL_CHARS = 28  # what `truncatechars:28` left of a name: 27 characters and an ellipsis


def label_of(run):
    """The run's name (else its id) cut to LABEL_CHARS. Not django.utils.text.Truncator: it looks up
    the translation of its ellipsis on every call, a third of the rows' time."""
    text = run.name or str(run.pk)
    return text if len(text) <= LABEL_CHARS else f"{text[:LABEL_CHARS - 1]}…"


def bar_row(bar, now_left):
    """One bar's row: the run's name and state, its bar, its last heartbeat and the now line."""
    run = bar["run"]
    url = run_url(run.pk)
    state = escape(run.state)
    flow = escape(run.flow.name)
    label = escape(label_of(run))
    marks = f"{' alarm' if bar['alarm'] else ''}{' open' if bar['open'] else ''}"
    beat = (f'<span class="mark-beat" style="left:{bar["heartbeat"]}%" title="last heartbeat"></span>'
            if bar["heartbeat"] is not None else "")
    now_line = (f'<span class="now-line" style="left:{now_left}%" aria-hidden="true"></span>'
                if now_left is not None else "")
    return mark_safe(
        f'<div class="tl-row" role="listitem" data-run="{run.pk}">\n'
        f'      <div class="tl-label"><a href="{url}">{label}</a>\n'
        f'        <span class="badge {bar["css"]}">{state}</span></div>\n'
        f'      <div class="tl-track">\n'
        f'        <a class="bar {bar["css"]}{marks}" style="left:{bar["left"]}%;width:{bar["width"]}%"\n'
        f'           href="{url}" title="{flow} · {state}"\n'
        f'           aria-label="{flow} run {escape(run.name)}: {state}"></a>\n'
        f'        {beat}\n'
        f'        {now_line}\n'
        f'      </div>\n'
        f'    </div>'
    )


def scatter_dot(point):
    """One finished run of the scatter: a dot with its name, flow, state and duration."""
    run = point["run"]
    return mark_safe(
        f'<circle class="dot {point["css"]}" cx="{point["x"]}" cy="{point["y"]}" r="5"><title>{escape(run)} · '
        f'{escape(run.flow.name)} · {escape(run.state)} · {escape(point["duration"])}</title></circle>'
    )


def recovery_row(row):
    """One act of the recovery review (queries.recovery_interventions): when, who, which run (and
    task run), what and why, which attempt, how it was recorded."""
    run, task_run = row["run"], row["task_run"]
    task = f'<br><span class="muted">task {escape(task_run)}</span>' if task_run else ""
    return mark_safe(
        f'<tr class="recovery-row">\n'
        f'      <td><time datetime="{row["time"].isoformat()}">{row["time"]:%Y-%m-%d %H:%M:%S}</time></td>\n'
        f'      <td>{escape(row["source"])}</td>\n'
        f'      <td><a href="{run_url(run.pk)}">{escape(run)}</a> <span class="muted">{escape(run.flow.name)}</span>'
        f'{task}</td>\n'
        f'      <td>{escape(row["reason"])}</td><td>{row["attempt"]}</td><td>{escape(row["kind"])}</td>\n'
        f'    </tr>'
    )


def gantt_row(row):
    """One task run of a run's Gantt (views.run_detail): its name and state, and its bar once started."""
    task = row["task"]
    bar = (f'<span class="bar {row["css"]}" style="left:{row["left"]}%;width:{row["width"]}%"></span>'
           if task.start_time else "")
    return mark_safe(
        f'<div class="tl-row" role="listitem"><div class="tl-label"><a href="{task_run_url(task.pk)}">{escape(task)}</a>'
        f' <span class="badge {row["css"]}">{escape(task.state)}</span></div>\n'
        f'          <div class="tl-track">{bar}</div></div>'
    )
