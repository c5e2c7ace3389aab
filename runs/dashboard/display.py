"""How numbers and states read on the page: ages, heartbeat verdicts, bar geometry."""

from dataclasses import dataclass

from django.conf import settings

from runs.models import State

# Runs whose heartbeat the overview watches.
HEARTBEAT_STATES = (State.SUBMITTED, State.RUNNING, State.CANCELLING)


def zombie_threshold_seconds():
    """The Zombie Killer's threshold: past it a silent run is declared dead."""
    return settings.ORCHESTRATOR.get("ZOMBIE_KILLER_THRESHOLD_SECONDS", 600)


def format_age(seconds):
    """'42 s', '7 min', '3 h 5 min', '2 d 4 h'; '—' for no value."""
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat age and its verdict against the Zombie Killer threshold."""

    age_seconds: float | None
    verdict: str  # fresh | ageing | stale | none
    label: str

    @property
    def age(self):
        return format_age(self.age_seconds)


def heartbeat_of(run, now, threshold=None):
    """Green below half the threshold, amber up to it, red past it (the Zombie Killer will act)."""
    threshold = threshold or zombie_threshold_seconds()
    if run.end_time is not None or run.state not in HEARTBEAT_STATES:
        # Only a run in flight is judged; a finished or waiting one owes no heartbeat.
        return Heartbeat(None, "none", "not expected: the run is not in flight")
    age = run.heartbeat_age(now)
    if age is None:
        return Heartbeat(None, "none", "no heartbeat yet")
    if age < threshold / 2:
        return Heartbeat(age, "fresh", "fresh")
    if age < threshold:
        return Heartbeat(age, "ageing", "ageing")
    return Heartbeat(age, "stale", "stale")


def state_css(state):
    """The CSS class of a state: `state-running`, …; the template always writes the word too."""
    return f"state-{str(state).lower()}"


def percent(moment, start, span_seconds):
    """Where `moment` falls between `start` and start + span, in percent, clamped to 0…100."""
    value = (moment - start).total_seconds() / span_seconds * 100
    return round(min(100.0, max(0.0, value)), 3)
