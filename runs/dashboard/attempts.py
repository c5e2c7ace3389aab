"""A run's attempts and its recovery story, drawn from its state history.

A run keeps its identity across attempts (DESIGN: a Lazarus reschedule or a retry changes the
attempt and its next start, never the slot). Each return to SCHEDULED after the run was made —
a Lazarus reschedule, a person's retry, an agent handing the run back — ends one attempt and
starts the next. An attempt's task runs are those that started within it (a task run that
COMPLETED in an earlier attempt stands, and shows in the attempt where it ran); its logs are
those written within it.
"""

from dataclasses import dataclass, field

from runs.models import Actor, State

# Who may act on a run for the recovery story: the services that judge runs by their heartbeats
# or their task runs, and the ones that finish what a person or a timeout started.
RECOVERY_ACTORS = frozenset({Actor.LAZARUS, Actor.ZOMBIE_KILLER, Actor.AGENT_MONITOR, Actor.LATE_RUNS,
                             Actor.CANCELLATION_CLEANUP, Actor.PAUSE_EXPIRER, Actor.AUTOMATION})


@dataclass
class Attempt:
    number: int
    start: object  # when it began: the run was made, or sent back to SCHEDULED
    end: object = None  # when the next attempt began; None for the current one
    changes: list = field(default_factory=list)
    task_runs: list = field(default_factory=list)
    ended_by: object = None  # the change that sent the run back to SCHEDULED

    @property
    def agent(self):
        for change in self.changes:
            if change.agent_id:
                return change.agent
        return None

    @property
    def outcome(self):
        """The state the attempt ended in (the current one: where it stands now)."""
        if self.ended_by is not None:
            return self.ended_by.from_state
        return self.changes[-1].to_state if self.changes else State.SCHEDULED

    def contains(self, moment):
        return moment is not None and moment >= self.start and (self.end is None or moment < self.end)


def attempts_of(run, history, task_runs=()):
    """The run's attempts, oldest first, from its own state changes (`history`, oldest first, its
    task runs' excluded) and its task runs."""
    attempts = [Attempt(1, run.created)]
    for change in history:
        if change.to_state == State.SCHEDULED and change.from_state:
            current = attempts[-1]
            current.end, current.ended_by = change.timestamp, change
            current.changes.append(change)
            attempts.append(Attempt(len(attempts) + 1, change.timestamp))
        else:
            attempts[-1].changes.append(change)
    for task_run in task_runs:
        moment = task_run.start_time or task_run.created
        home = next((a for a in attempts if a.contains(moment)), attempts[-1])
        home.task_runs.append(task_run)
    return attempts


def recovery_story(history, logs=()):
    """What the services did to the run, oldest first: each state change a recovery service made,
    with the log line it wrote at that moment (the why) when there is one, and its log lines that
    stand alone. Rows: (time, actor label, transition or "", message)."""
    said = {(log.source, log.timestamp): log.message for log in logs}
    rows, told = [], set()
    for change in history:
        if change.actor not in RECOVERY_ACTORS:
            continue
        message = said.get((change.actor, change.timestamp)) or change.message
        told.add((change.actor, change.timestamp))
        rows.append((change.timestamp, change.get_actor_display(), f"{change.from_state or '—'} → {change.to_state}",
                     message))
    for log in logs:
        if (log.source, log.timestamp) not in told:
            rows.append((log.timestamp, Actor(log.source).label if log.source in Actor.values else log.source, "",
                         log.message))
    rows.sort(key=lambda row: row[0])
    return rows
