"""The orchestration rules: every state change of a flow run or task run passes through here.

Two entry points, one set of rules:
- `set_flow_run_state` / `set_task_run_state` move one run (the API, the admin, agents);
- `transition_flow_runs` / `transition_task_runs` move every run of a queryset at once, in a
  constant number of queries (the background services).

Each change is a conditional update on the state the caller saw, so a run that moved a moment
ago is never overwritten: the caller gets a `StaleTransition` naming both states instead. Each
change writes a history row (who, from, to, why) and an event.
"""

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, models, transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from events.emit import emit, make
from runs import hot_sql, quota
from runs.models import (
    RECOVERY_ACTORS,
    TERMINAL_STATES,
    Actor,
    FlowRun,
    State,
    StateChange,
    TaskRun,
)

S = State
logger = logging.getLogger(__name__)
# Errors of the connection, not of a row: a service pass that meets one fails as a whole.
CONNECTION_ERRORS = (OperationalError, InterfaceError)

# from-state -> the states a flow run may move to. Leaving a terminal state needs an explicit
# retry (see `retry=`), or is the one late-completion case in `_late_completion_allowed`.
FLOW_RUN_TRANSITIONS = {
    S.SCHEDULED: {S.SCHEDULED, S.LATE, S.SUBMITTED, S.RUNNING, S.CANCELLED, S.FAILED},
    S.LATE: {S.SCHEDULED, S.SUBMITTED, S.RUNNING, S.CANCELLED, S.FAILED},
    S.SUBMITTED: {S.SCHEDULED, S.RUNNING, S.CANCELLING, S.CANCELLED, S.FAILED, S.CRASHED},
    S.RUNNING: {S.SCHEDULED, S.PAUSED, S.CANCELLING, S.CANCELLED, S.COMPLETED, S.FAILED, S.CRASHED},
    S.PAUSED: {S.SCHEDULED, S.RUNNING, S.CANCELLING, S.CANCELLED, S.FAILED, S.CRASHED},
    S.CANCELLING: {S.CANCELLED, S.COMPLETED, S.FAILED, S.CRASHED},
    S.COMPLETED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
    S.CRASHED: set(),
}

# Task runs are never LATE (they have no due time of their own); SCHEDULED is "waiting", also
# for a retry after a failed attempt.
TASK_RUN_TRANSITIONS = {
    S.SCHEDULED: {S.SUBMITTED, S.RUNNING, S.CANCELLED, S.FAILED, S.CRASHED},
    S.LATE: set(),
    S.SUBMITTED: {S.RUNNING, S.CANCELLED, S.FAILED, S.CRASHED},
    S.RUNNING: {S.SCHEDULED, S.PAUSED, S.CANCELLING, S.CANCELLED, S.COMPLETED, S.FAILED, S.CRASHED},
    S.PAUSED: {S.RUNNING, S.CANCELLED, S.FAILED, S.CRASHED},
    S.CANCELLING: {S.CANCELLED, S.COMPLETED, S.FAILED, S.CRASHED},
    S.COMPLETED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
    S.CRASHED: set(),
}

# Where an explicit retry may send a finished run.
RETRY_TARGETS = {"flow run": {S.SCHEDULED}, "task run": {S.SCHEDULED, S.RUNNING}}


class TransitionError(Exception):
    """A state change that the rules refuse. `code` tells the API which status to answer."""

    code = "illegal_transition"

    def __init__(self, message, *, current, requested):
        super().__init__(message)
        self.message = message
        self.current = current
        self.requested = requested


class IllegalTransition(TransitionError):
    """The rules never allow this pair of states."""


class StaleTransition(TransitionError):
    """The run is no longer in the state the caller saw."""

    code = "stale_transition"


@dataclass(frozen=True)
class _Kind:
    label: str
    model: type
    transitions: dict
    event_prefix: str
    workspace_path: str  # lookup from the row to its workspace id
    flow_run_path: str  # lookup from the row to its flow run id
    related_paths: tuple  # (resource kind, lookup from the row) of the resources its events name


FLOW = _Kind("flow run", FlowRun, FLOW_RUN_TRANSITIONS, "flow-run", "workspace_id", "id",
             (("flow", "flow_id"), ("schedule", "schedule_id"), ("work-queue", "work_queue_id"), ("agent", "agent_id")))
TASK = _Kind("task run", TaskRun, TASK_RUN_TRANSITIONS, "task-run", "flow_run__workspace_id", "flow_run_id",
             (("flow-run", "flow_run_id"), ("flow", "flow_run__flow_id")))


def is_legal(kind_label, from_state, to_state, *, retry=False):
    """Whether the rules allow `from_state` → `to_state` for a "flow run" or a "task run"."""
    kind = FLOW if kind_label == "flow run" else TASK
    if retry and from_state in TERMINAL_STATES:
        return to_state in RETRY_TARGETS[kind.label]
    return to_state in kind.transitions[from_state]


STATE_VALUES = frozenset(S.values)  # State.values builds its list anew on every access


def _check(kind, obj_id, from_state, to_state, retry):
    if to_state not in STATE_VALUES:
        raise IllegalTransition(f"{to_state!r} is not a state", current=from_state, requested=to_state)
    if not is_legal(kind.label, from_state, to_state, retry=retry):
        hint = " (a finished run moves again only through an explicit retry)" if from_state in TERMINAL_STATES else ""
        raise IllegalTransition(
            f"Cannot move {kind.label} {obj_id} from {from_state} to {to_state}{hint}.",
            current=from_state, requested=to_state,
        )


# Entering these, a flow run starts a new attempt (claimed) or waits for one (rescheduled, handed
# back, retried): the report token of the attempt before stops being valid (runs/run_tokens.py).
NEW_ATTEMPT_STATES = (S.SUBMITTED, S.SCHEDULED)


def _time_updates(kind, from_state, to_state, now):
    """Start/end bookkeeping that follows from a transition."""
    updates = {"state": to_state, "state_changed": now}
    if kind is FLOW and to_state in NEW_ATTEMPT_STATES:
        updates["token_generation"] = F("token_generation") + 1
    if to_state == S.RUNNING:
        updates["start_time"] = Coalesce(F("start_time"), models.Value(now))
        updates["run_count"] = F("run_count") + 1
    if to_state in TERMINAL_STATES:
        updates["end_time"] = now
    elif from_state in TERMINAL_STATES:
        updates["end_time"] = None  # a retried run is open again
        if kind is FLOW:
            updates["expires_at"] = None  # and no longer due for retention
    return updates


def _late_completion_allowed(run_id, from_state, to_state, actor, kind):
    """A recovery service's FAILED/CRASHED verdict may be overturned by the original agent's COMPLETED.

    The reference products lost real results this way: the node was slow, not dead. Returns the
    actor of the verdict when the exception applies, else None.
    """
    if not (actor == Actor.AGENT and from_state in (S.FAILED, S.CRASHED) and to_state == S.COMPLETED):
        return None
    lookup = {"flow_run_id": run_id, "task_run__isnull": True} if kind is FLOW else {"task_run_id": run_id}
    last = StateChange.objects.filter(**lookup).order_by("-timestamp", "-id").values_list("actor", "to_state").first()
    if last and last[0] in RECOVERY_ACTORS and last[1] == from_state:
        return last[0]
    return None


def _history_row(kind, row_id, flow_run_id, from_state, to_state, message, actor, user, agent, now):
    return StateChange(
        flow_run_id=flow_run_id,
        task_run_id=row_id if kind is TASK else None,
        from_state=from_state or "",
        to_state=to_state,
        message=message,
        actor=actor,
        user=user,
        agent=agent,
        timestamp=now,
    )


def _event(kind, row_id, workspace_id, from_state, to_state, message, actor, now, related, extra=None):
    """The event of one transition; `related` maps a resource kind to its id (None: not set);
    `extra`: more payload (a service's verdict), never overriding the transition's own keys.
    runs/hot_sql.py's claim builds the same in SQL (_transition_event_json)."""
    return make(
        workspace_id,
        _event_name(kind, to_state),
        {"kind": kind.event_prefix, "id": str(row_id)},
        related=[{"kind": kind_, "id": str(id_)} for kind_, id_ in related.items() if id_ is not None],
        payload={**(extra or {}), "from": from_state, "to": to_state, "message": message, "actor": actor},
        occurred=now,
    )


def flow_run_event_name(to_state):
    """The name of a flow run's event for entering `to_state` (flow-run.state.submitted, …)."""
    return _event_name(FLOW, to_state)


def _event_name(kind, to_state):
    return f"{kind.event_prefix}.state.{to_state.lower()}"


def _related_of_object(kind, obj):
    if kind is FLOW:
        return {"flow": obj.flow_id, "schedule": obj.schedule_id, "work-queue": obj.work_queue_id,
                "agent": obj.agent_id}
    return {"flow-run": obj.flow_run_id, "flow": obj.flow_run.flow_id}


def _direct(model, fence):
    """`fence` with each condition on a related row (`flow_run__token_generation`) as a subquery
    (`flow_run__in`), so that the conditional UPDATE stays a plain `UPDATE … WHERE id = … AND state = …`.

    Filtering an UPDATE across a relation makes Django write `WHERE id IN (SELECT … JOIN …)`, whose
    state condition PostgreSQL reads from the statement's snapshot: a report that waited for the row
    lock of a concurrent move would then move (and count) the run a second time. On the row's own
    columns, the condition is checked again on the row as the other transaction left it.
    """
    direct = {}
    for key, value in fence.items():
        relation, _, rest = key.partition("__")
        field = model._meta.get_field(relation) if rest else None
        if field is not None and field.is_relation:
            direct[f"{relation}__in"] = field.related_model.objects.filter(**{rest: value}).values("pk")
        else:
            direct[key] = value
    return direct


def _set_state(kind, obj, to_state, *, actor, message, expected_state, user, agent, now, retry, updates,
               fence=None, history=False):
    now = now or timezone.now()
    from_state = expected_state or obj.state
    late_verdict = _late_completion_allowed(obj.pk, from_state, to_state, actor, kind)
    if late_verdict:
        message = (message + " " if message else "") + (
            f"Accepted a late {to_state} from the run's agent after {late_verdict} marked it {from_state}."
        )
    else:
        _check(kind, obj.pk, from_state, to_state, retry)

    values = _time_updates(kind, from_state, to_state, now)
    values["state_message"] = message
    values.update(updates or {})
    # A task run's first COMPLETED counts toward its workspace's monthly quota (runs/quota.py). The
    # flag is set, and checked unset, by the same UPDATE: only one move ever counts it.
    counting = kind is TASK and to_state == S.COMPLETED and not obj.quota_counted
    if kind is TASK and to_state == S.COMPLETED:
        values["quota_counted"] = True
    # A plain move of a flow run (the API's, most services'): hand-written SQL whose UPDATE returns
    # the row, in place of the ORM's query building and the refresh after it (runs/hot_sql.py).
    plain = (kind is FLOW and not fence and connection.features.can_return_columns_from_insert
             and all(name in _PLAIN_RUN_FIELDS and not hasattr(value, "resolve_expression")
                     for name, value in values.items()))
    # On PostgreSQL a plain move is one statement, its own transaction (own_transaction_will_do).
    alone = plain and own_transaction_will_do()
    read = None  # the history, when the move read it
    with contextlib.nullcontext() if alone else transaction.atomic():
        if plain:  # the history row goes with the move (one statement on PostgreSQL)
            history_row = _history_row(kind, obj.pk, obj.pk, from_state, to_state, message, actor, user, agent, now)
            row, read = hot_sql.move_flow_run(obj.pk, from_state, values, history_row, history=history)
            changed = 0 if row is None else 1
        else:
            moving = kind.model.objects.filter(pk=obj.pk, state=from_state, **_direct(kind.model, fence or {}))
            changed = moving.filter(quota_counted=False).update(**values) if counting else moving.update(**values)
        if counting and changed != 1:
            # Counted since the caller loaded it (completed, retried and running again meanwhile): move it
            # without counting it again.
            counting = False
            changed = moving.update(**values)
        if changed != 1:
            current = kind.model.objects.filter(pk=obj.pk).values_list("state", flat=True).first()
            if current is None:
                raise kind.model.DoesNotExist(f"{kind.label} {obj.pk} does not exist")
            raise StaleTransition(
                f"Cannot move {kind.label} {obj.pk} to {to_state}: it is {current}, not {from_state} as expected.",
                current=current, requested=to_state,
            )
        flow_run_id = obj.pk if kind is FLOW else obj.flow_run_id
        workspace_id = obj.workspace_id if kind is FLOW else obj.flow_run.workspace_id
        if not plain:
            _history_row(kind, obj.pk, flow_run_id, from_state, to_state, message, actor, user, agent, now).save()
        if counting:
            quota.count_completions([(workspace_id, obj.pk)], now)
        # Sent after the commit (the embedded mode writes its buffer row in this transaction).
        related = _related_of_object(kind, obj)
        if kind is FLOW and updates and ("agent" in updates or "agent_id" in updates):
            new_agent = updates.get("agent", updates.get("agent_id"))
            related["agent"] = getattr(new_agent, "pk", new_agent)
        emit([_event(kind, obj.pk, workspace_id, from_state, to_state, message, actor, now, related)])
    if plain:
        _take_row(obj, row)
    else:
        obj.refresh_from_db()
    if history:
        return obj, read if read is not None else hot_sql.run_history(obj.pk)
    return obj


def own_transaction_will_do():
    """Whether a change made in one statement may be its own transaction, with no BEGIN and COMMIT
    around it: on PostgreSQL, when its events go to Redis after the commit (without Redis their
    buffer rows are written in the change's transaction, events/emit.py) and no caller's transaction
    is open (a savepoint keeps that one usable after an error)."""
    return connection.vendor == "postgresql" and bool(settings.REDIS_URL) and not connection.in_atomic_block


# A flow run's columns a plain move may write by hand (not its foreign keys: an update may name
# those by the relation, `agent=`, which hot_sql.move_flow_run does not translate).
_PLAIN_RUN_FIELDS = frozenset(field.attname for field in FlowRun._meta.concrete_fields if not field.is_relation)


def _take_row(obj, row):
    """What obj.refresh_from_db() does, from the columns hot_sql.move_flow_run returned: the new
    values, and no cached related object or prefetched list that may since be stale."""
    for field, value in zip(FlowRun._meta.concrete_fields, row):
        setattr(obj, field.attname, value)
        if field.is_relation and field.is_cached(obj):
            field.delete_cached_value(obj)
    for field in FlowRun._meta.related_objects:
        if field.is_cached(obj):
            field.delete_cached_value(obj)
    obj._prefetched_objects_cache = {}
    obj._state.db = connection.alias


def set_flow_run_state(run, to_state, *, actor, message="", expected_state=None, user=None, agent=None,
                       now=None, retry=False, updates=None, fence=None, history=False):
    """Move one flow run to `to_state`, or raise IllegalTransition / StaleTransition.

    `expected_state` defaults to the state on `run` as the caller loaded it. `updates` are more
    fields written in the same conditional update (e.g. the claiming agent, a new start time).
    `fence`: more conditions of that update (an agent's report: the attempt its token is for); when
    they no longer hold, nothing changes and StaleTransition is raised.
    `history`: returns (run, its history as runs/hot_sql.py's run_history() gives it, this change's
    row included), read with the move where one statement can (PostgreSQL), for an answer to show.
    """
    return _set_state(FLOW, run, to_state, actor=actor, message=message, expected_state=expected_state,
                      user=user, agent=agent, now=now, retry=retry, updates=updates, fence=fence, history=history)


class NotMoved(NamedTuple):
    """set_listed_flow_run_state did not move the run: the general path decides, as if the caller
    had seen it in `state` (None: the state the general path reads)."""

    state: str | None


def set_listed_flow_run_state(run_id, workspace_id, to_state, *, actor, message="", expected_state=None, user=None):
    """A person's or program's move of the run `run_id` of the workspace, found as the API lists
    runs, in one statement with its history row and the answer's names and history (PostgreSQL,
    runs/hot_sql.py change_listed_flow_run). Returns (run, {foreign key name: name}, history), None
    when there is no such run, or NotMoved when the general path must decide (set_flow_run_state,
    with expected_state that NotMoved's state when it has one): another database, a move whose
    columns depend on the state it leaves, a state the rules do not let move to `to_state`, a run
    that moved after the statement saw it (a 409 naming where it went, as the general path would
    have answered had it read the run first). Same rules, history row and event as set_flow_run_state's."""
    from_states = _leaving_alike(to_state)
    if (connection.vendor != "postgresql" or from_states is None
            or (expected_state is not None and expected_state not in from_states)):
        return NotMoved(expected_state)
    now = timezone.now()
    values = {**_time_updates(FLOW, from_states[0], to_state, now), "state_message": message}
    change = _history_row(FLOW, None, None, "", to_state, message, actor, user, None, now)
    with contextlib.nullcontext() if own_transaction_will_do() else transaction.atomic():
        done = hot_sql.change_listed_flow_run(run_id, workspace_id, from_states, expected_state, values, change)
        if done is None:
            return None
        found, moved = done
        if moved is None:
            return NotMoved(expected_state or found)
        row, names, history = moved
        run = FlowRun.from_db(connection.alias, hot_sql.run_fields(), row)
        emit([_event(FLOW, run.pk, workspace_id, found, to_state, message, actor, now, _related_of_object(FLOW, run))])
    return run, names, history


@functools.cache
def _leaving_alike(to_state):
    """The states a flow run may leave for `to_state` (not by a retry, nor a late completion: those
    leave finished states, which are not here), sorted, when the move writes the same plain values
    from each of them; else None."""
    from_states = tuple(sorted(state for state, targets in FLOW_RUN_TRANSITIONS.items() if to_state in targets))
    now = object()  # the moment: any value, the same for each
    moves = [_time_updates(FLOW, state, to_state, now) for state in from_states]
    if not from_states or any(move != moves[0] for move in moves) or any(
            name not in _PLAIN_RUN_FIELDS or hasattr(value, "resolve_expression") for name, value in moves[0].items()):
        return None
    return from_states


def set_task_run_state(task_run, to_state, *, actor, message="", expected_state=None, user=None, agent=None,
                       now=None, retry=False, updates=None, fence=None):
    """Move one task run to `to_state`, or raise IllegalTransition / StaleTransition (see `fence` above)."""
    return _set_state(TASK, task_run, to_state, actor=actor, message=message, expected_state=expected_state,
                      user=user, agent=agent, now=now, retry=retry, updates=updates, fence=fence)


def _transition_many(kind, queryset, to_state, *, actor, message, now, updates, limit, extra_fields, user,
                     event_payload=None, retry=False):
    if retry:  # an explicit retry: finished rows only, to a state a retry may enter
        allowed_from = sorted(TERMINAL_STATES) if to_state in RETRY_TARGETS[kind.label] else []
    else:
        allowed_from = [s for s, targets in kind.transitions.items() if to_state in targets]
    counted = ("quota_counted",) if kind is TASK and to_state == S.COMPLETED else ()
    fields = list(dict.fromkeys(["pk", "state", kind.workspace_path, kind.flow_run_path,
                                 *(path for _, path in kind.related_paths), *extra_fields, *counted]))
    # Rows another copy of the service holds are skipped, not waited for: that copy acts on them.
    candidates = queryset.filter(state__in=allowed_from).select_for_update(skip_locked=True, of=("self",))
    move = functools.partial(_move, kind, to_state, message, actor=actor, now=now, updates=updates, user=user,
                             event_payload=event_payload)
    picked = []
    try:
        with transaction.atomic():
            rows = list(candidates.order_by("pk").values(*fields)[:limit] if limit else candidates.values(*fields))
            picked = [row["pk"] for row in rows]
            move(rows)
        return rows
    except CONNECTION_ERRORS:
        raise  # the database went away: no row is to blame, the pass failed
    except DatabaseError:
        if not picked:
            raise  # the read itself failed: nothing of this pass can be judged
        # One bad row (a constraint, a trigger, a value the database refuses) must not keep the
        # others where they are: each row is tried again on its own and only the bad ones stay.
        logger.warning("Moving %d %ss to %s failed as a batch; trying them one by one.", len(picked), kind.label,
                       to_state, exc_info=True)
    return _move_one_by_one(kind, picked, candidates, fields, move, to_state)


# In the one-by-one fallback: when this many rows in a row fail and none moved, the cause is not a
# row (a full disk, a missing table) and the pass fails instead of trying a thousand more.
ROWS_TRIED_BEFORE_GIVING_UP = 20


def _move_one_by_one(kind, picked, candidates, fields, move, to_state):
    """Each row in its own transaction; returns the rows moved. Raises when none can move, so a pass
    that does nothing because of a global failure is recorded as failed, not as a quiet success."""
    moved, failed, last_error = [], 0, None
    for pk in picked:
        try:
            with transaction.atomic():
                rows = list(candidates.filter(pk=pk).values(*fields))
                move(rows)
            moved += rows
        except CONNECTION_ERRORS:
            raise
        except DatabaseError as exc:
            failed, last_error = failed + 1, exc
            logger.exception("Could not move %s %s to %s; it stays as it is for this pass.", kind.label, pk, to_state)
            if not moved and failed >= ROWS_TRIED_BEFORE_GIVING_UP:
                break
    if failed and not moved:
        raise last_error
    return moved


def _move(kind, to_state, message, rows, *, actor, now, updates, user, event_payload=None):
    """Write the transitions of `rows` (locked by the caller): updates by from-state, history, events."""
    if not rows:
        return
    texts = {row["pk"]: message(row) if callable(message) else message for row in rows}
    if callable(message):
        # Per-row messages go into the same UPDATE, as a CASE over the ids.
        state_message = models.Case(*[models.When(pk=pk, then=models.Value(text)) for pk, text in texts.items()],
                                    default=models.Value(""), output_field=models.TextField())
    else:
        state_message = message
    if callable(message):
        StateChange.objects.bulk_create([
            _history_row(kind, row["pk"], row[kind.flow_run_path], row["state"], to_state, texts[row["pk"]], actor,
                         user, None, now) for row in rows])
    else:
        # One INSERT … SELECT, before the UPDATE, reading each locked row's from-state (a claim's 200
        # history rows cost 4.4 ms of CPU as model instances).
        hot_sql.insert_history_of_locked_rows(kind.model, [row["pk"] for row in rows], to_state=to_state,
                                              message=message, actor=actor, user_id=getattr(user, "pk", None),
                                              now=now)
    by_from = {}
    for row in rows:
        by_from.setdefault(row["state"], []).append(row["pk"])
    for from_state, ids in by_from.items():
        values = _time_updates(kind, from_state, to_state, now)
        values["state_message"] = state_message
        if kind is TASK and to_state == S.COMPLETED:
            values["quota_counted"] = True
        values.update(updates or {})
        kind.model.objects.filter(hot_sql.pk_in(ids), state=from_state).update(**values)
    if kind is TASK and to_state == S.COMPLETED:
        # The rows are locked (select_for_update by the caller), so the flag read with them is current.
        quota.count_completions([(row[kind.workspace_path], row["pk"]) for row in rows if not row["quota_counted"]],
                                now)
    emit([_event(kind, row["pk"], row[kind.workspace_path], row["state"], to_state, texts[row["pk"]], actor, now,
                 {kind_: row[path] for kind_, path in kind.related_paths},
                 event_payload(row) if event_payload else None) for row in rows])


def transition_flow_runs(queryset, to_state, *, actor, message="", now=None, updates=None, limit=None,
                         extra_fields=(), user=None, event_payload=None, retry=False):
    """Move every flow run of `queryset` that may legally go to `to_state`; returns the rows moved.

    Set-based: a constant number of queries whatever the number of runs. `message` is a string
    or a function of the row (a dict with pk, state, workspace_id and `extra_fields`);
    `event_payload`, a function of the row, adds to each state event's payload (a verdict).
    `retry`: an explicit retry, which moves only finished runs (to SCHEDULED).
    """
    return _transition_many(FLOW, queryset, to_state, actor=actor, message=message, now=now or timezone.now(),
                            updates=updates, limit=limit, extra_fields=extra_fields, user=user,
                            event_payload=event_payload, retry=retry)


def transition_task_runs(queryset, to_state, *, actor, message="", now=None, updates=None, limit=None,
                         extra_fields=(), user=None, event_payload=None):
    """Move every task run of `queryset` that may legally go to `to_state`; returns the rows moved."""
    return _transition_many(TASK, queryset, to_state, actor=actor, message=message, now=now or timezone.now(),
                            updates=updates, limit=limit, extra_fields=extra_fields, user=user,
                            event_payload=event_payload)
