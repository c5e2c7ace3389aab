"""Agents claim due runs of their queues: SCHEDULED or LATE runs whose start time has come.

Two agents polling the same queue never get the same run: due rows are picked with
`SELECT … FOR UPDATE SKIP LOCKED` (on PostgreSQL), so a row one agent is claiming is skipped by
the other rather than waited for. On PostgreSQL the pick, the move to SUBMITTED of the rows it
locked, their history and the answer's rows are one statement (runs/hot_sql.py claim_runs); on
SQLite, and when PostgreSQL refuses that statement, the move is a conditional update through
`runs.states` and the runs are read again after it. A queue with a concurrency limit is locked
while it is counted, so two agents cannot both fill its last free slot.

A claim's answer can be lost (a timeout, a dropped connection, an agent killed and restarted under
its name): `claim_for_agent` hands an agent the runs it claimed and has not started (still
SUBMITTED to it) again, before new ones, so they do not wait for the agent monitor or Lazarus;
the agent skips the ones it already runs.
"""

import logging
from collections import namedtuple
from contextlib import nullcontext
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Q

from events.emit import Encoded, emit, make, resource
from runs import hot_sql
from runs.models import ACTIVE_STATES, Actor, Agent, FlowRun, State, WorkQueue
from runs.states import CONNECTION_ERRORS, flow_run_event_name, own_transaction_will_do, transition_flow_runs

logger = logging.getLogger(__name__)

# Listed in the order of the partial index `flowrun_claimable`, so the planner (SQLite's in
# particular) sees that the poll's predicate implies the index's and uses it.
CLAIMABLE = [State.SCHEDULED, State.LATE]


def _free_slots(queues):
    """{queue id: how many more runs it may hand out}; None means no limit."""
    limited = [q.pk for q in queues if q.concurrency_limit is not None]
    active = {}
    if limited:
        active = dict(
            FlowRun.objects.filter(work_queue_id__in=limited, state__in=ACTIVE_STATES)
            .values("work_queue_id").annotate(n=Count("pk")).values_list("work_queue_id", "n")
        )
    return {
        q.pk: None if q.concurrency_limit is None else max(q.concurrency_limit - active.get(q.pk, 0), 0)
        for q in queues
    }


def polled_before(now):
    """A queue whose last poll is older than this is recorded as polled again (record_poll)."""
    return now - timedelta(seconds=settings.ORCHESTRATOR["EVENTS_QUEUE_POLLED_EVERY_SECONDS"])


def record_poll(queue_ids, now, agent=None):
    """Mark the queues as polled at `now`, so queue health can tell a polled queue from an abandoned one;
    returns the ids of the queues whose poll was recorded.

    One conditional UPDATE: `last_polled` moves only when it is older than
    EVENTS_QUEUE_POLLED_EVERY_SECONDS (so it is exact to that interval, which queue health, judged
    over minutes, does not notice), and each queue it moved emits `work-queue.polled`. So the event
    comes at most once per queue per interval, also when agents poll at once (the second UPDATE
    re-checks the condition on the row the first one changed and matches nothing), and a poll
    costs no more than before: most polls write no row at all.

    Runs in its own short transaction with PostgreSQL's synchronous commit off: losing the last
    poll time in a database crash is harmless (the next poll rewrites it), and not waiting for the
    WAL flush is most of the cost of a poll that finds nothing.
    """
    if not queue_ids:
        return []
    stale_before = polled_before(now)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        moved = _move_last_polled(queue_ids, now, stale_before)
    if moved:
        emit([make(workspace_id, "work-queue.polled", resource("work-queue", pk, name),
                   related=[resource("agent", agent.pk, agent.name)] if agent else (), occurred=now)
              for pk, workspace_id, name in moved])
    return [pk for pk, _, _ in moved]


def _move_last_polled(queue_ids, now, stale_before):
    """(id, workspace id, name) of the queues of `queue_ids` whose last_polled was older than
    `stale_before` (or never set), now set to `now`."""
    stale = WorkQueue.objects.filter(pk__in=queue_ids).filter(
        Q(last_polled__isnull=True) | Q(last_polled__lt=stale_before))
    if not connection.features.can_return_columns_from_insert:
        # An SQLite without RETURNING: read, then write, in the caller's transaction, which SQLite
        # runs IMMEDIATE (one writer at a time), so no other poll moves these rows in between.
        rows = list(stale.values_list("pk", "workspace_id", "name"))
        WorkQueue.objects.filter(pk__in=[row[0] for row in rows]).update(last_polled=now)
        return rows
    meta = WorkQueue._meta
    quote = connection.ops.quote_name
    column = quote(meta.get_field("last_polled").column)
    field = meta.get_field("last_polled")
    placeholders = ", ".join(["%s"] * len(queue_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(meta.db_table)} SET {column} = %s WHERE {quote(meta.pk.column)} IN ({placeholders}) "
            f"AND ({column} IS NULL OR {column} < %s) "
            f"RETURNING {quote(meta.pk.column)}, {quote(meta.get_field('workspace').column)}, "
            f"{quote(meta.get_field('name').column)}",
            [field.get_db_prep_value(now, connection), *queue_ids, field.get_db_prep_value(stale_before, connection)])
        return cursor.fetchall()


PollState = namedtuple("PollState", "agent queues mine due")


def poll_state(workspace_id, agent_id, now):
    """What a poll knows before it claims; None when the workspace has no such agent.

    A PollState of `agent` (an Agent: its id, workspace, name and status loaded), `queues` (its
    queues as (id, paused, concurrency limit, whether the last poll is older than polled_before)),
    `mine` (its SUBMITTED and CANCELLING runs as (id, state), oldest scheduled start first) and `due`
    (whether a run is due in one of its unpaused queues; None: not read). On PostgreSQL one query
    (runs/hot_sql.py poll_snapshot), elsewhere three.
    """
    stale_before = polled_before(now)
    if connection.vendor == "postgresql":
        snapshot = hot_sql.poll_snapshot(agent_id, workspace_id, now, stale_before)
        if snapshot is None:
            return None
        name, status, queues, mine, due = snapshot
        agent = Agent.from_db(connection.alias, ["id", "workspace_id", "name", "status"],
                              [agent_id, workspace_id, name, status])
        return PollState(agent, queues, mine, due)
    agent = Agent.objects.filter(pk=agent_id, workspace_id=workspace_id).first()
    if agent is None:
        return None
    return PollState(agent, _queues_of(agent, stale_before), _mine(agent), None)


def _queues_of(agent, stale_before):
    return [(pk, paused, cap, polled is None or polled < stale_before) for pk, paused, cap, polled in
            WorkQueue.objects.filter(agents=agent).values_list("pk", "paused", "concurrency_limit", "last_polled")]


def _mine(agent):
    # One read for both: the partial index on active states holds few rows, whatever the table's size.
    return list(FlowRun.objects.alive().filter(agent=agent, state__in=[State.SUBMITTED, State.CANCELLING])
                .order_by("scheduled_start").values_list("pk", "state"))


Claim = namedtuple("Claim", "runs cancelling")


def claim_for_agent(agent, *, limit, now, new_runs=True, state=None):
    """What an agent's claim gets: a Claim of the runs to start and the ids of its runs to cancel.

    `runs` (oldest scheduled start first, at most `limit`) are first the runs claimed by this
    agent earlier and not started, then newly claimed due runs; `cancelling` are its runs that are
    CANCELLING, whose processes the agent ends. `new_runs` False (the workspace's quota is used up,
    runs/quota.py): no due run is claimed, they stay SCHEDULED/LATE; the poll is still recorded.
    `state`: the poll's PollState when it was read already (the agent's queues and runs are taken from it).
    """
    mine = state.mine if state is not None else _mine(agent)
    again = [pk for pk, run_state in mine if run_state == State.SUBMITTED][:max(limit, 0)]
    runs = claim_due_runs(agent, limit=limit - len(again) if new_runs else 0, now=now,
                          queues=state.queues if state is not None else None)
    if again:
        runs += handed_out(agent, again)
        runs.sort(key=lambda run: run.scheduled_start)
    return Claim(runs, [pk for pk, run_state in mine if run_state == State.CANCELLING])


class ClaimedRun(namedtuple("ClaimedRun", [
        "pk", "name", "state", "scheduled_start", "parameters", "workspace_id", "token_generation", "agent_id",
        "work_queue_id", "flow_version_id", "flow_name", "entrypoint", "version_parameters", "version_job_env",
        "version_secrets", "queue_name", "queue_job_env"])):
    """A claimed run as its agent gets it: the run's own fields and what the answer takes from its
    flow, its version and its queue (those of a run without a version or a queue are None)."""

    __slots__ = ()


_CLAIMED_RUN_FIELDS = (
    "pk", "name", "state", "scheduled_start", "parameters", "workspace_id", "token_generation", "agent_id",
    "work_queue_id", "flow_version_id", "flow__name", "flow_version__entrypoint", "flow_version__parameters",
    "flow_version__job_env", "flow_version__secrets", "work_queue__name", "work_queue__job_env")


def handed_out(agent, run_ids):
    """The runs of `run_ids` that are still SUBMITTED to `agent`, ready to hand to it (oldest first),
    as ClaimedRun rows.

    Read after the ORM claim's UPDATE committed (or after the read of the agent's runs, for the runs
    handed out again), so each run is checked again: one cancelled, deleted, started or claimed by
    another agent meanwhile is not handed out. (PostgreSQL's one-statement claim answers from its
    own RETURNING: a run cancelled after it committed is refused at its runner's first report.)
    Claiming itself never changes state here, so leaving one out is always safe.
    Rows, not model instances: four instances per run cost a claim of 200 runs about a third of its CPU.
    """
    if not run_ids:
        return []
    if connection.vendor == "postgresql":
        rows = hot_sql.claimed_run_rows(agent.pk, run_ids)
    else:
        rows = (FlowRun.objects.alive().filter(pk__in=run_ids, agent=agent, state=State.SUBMITTED)
                .order_by("scheduled_start").values_list(*_CLAIMED_RUN_FIELDS))
    return [ClaimedRun._make(row) for row in rows]


def cancelling_run_ids(agent_id):
    """Ids of the agent's runs that are CANCELLING (the answer to its heartbeat)."""
    return list(FlowRun.objects.alive().filter(agent_id=agent_id, state=State.CANCELLING).values_list("pk", flat=True))


def claim_due_runs(agent, *, limit, now, queues=None):
    """Move up to `limit` due runs of the agent's unpaused queues to SUBMITTED for `agent`.

    Returns the claimed runs (oldest scheduled start first) as ClaimedRun rows. A run of a schedule
    takes its version now: the pinned one, or the flow's latest. Records the poll on every queue of
    the agent, paused or not, so queue health can tell a polled-but-paused queue from an abandoned one.
    `queues`: the agent's queues as PollState has them, when the poll read them already.
    """
    if queues is None:
        queues = _queues_of(agent, polled_before(now))
    # Most polls find every queue polled within the interval: then record_poll's transaction and
    # UPDATE (which would match no row) are skipped. Its UPDATE re-checks the condition, so polls
    # that both see a stale queue still record (and announce) it once.
    record_poll([pk for pk, _, _, stale in queues if stale], now, agent)
    open_queues = [(pk, cap) for pk, paused, cap, _ in queues if not paused]
    if not open_queues or limit <= 0:
        return []
    if connection.vendor == "postgresql":
        claimed = _claim_in_one_statement(agent, open_queues, limit, now)
        if claimed is not None:
            return claimed
    return _claim_with_the_orm(agent, open_queues, limit, now)


def _free_queues(open_queues):
    """{queue id: how many more runs it may hand out (None: no limit)} of `open_queues` ((id, limit) as
    the poll read them), leaving out the full ones. A queue with a limit is locked (in the caller's
    transaction) and counted: claims where a count decides wait for each other, as they must;
    queues without one are claimed concurrently, SKIP LOCKED keeping agents apart."""
    slots = {pk: None for pk, cap in open_queues if cap is None}
    if len(slots) < len(open_queues):
        # The limits as the locked rows have them: one raised or removed meanwhile counts.
        limited = list(WorkQueue.objects.filter(pk__in=[pk for pk, cap in open_queues if cap is not None])
                       .select_for_update())
        slots.update(_free_slots(limited))
    return {pk: free for pk, free in slots.items() if free is None or free > 0}


def _claim_message(agent):
    return f"Claimed by agent {agent.name}."


def _claim_in_one_statement(agent, open_queues, limit, now):
    """PostgreSQL: the claim as one statement (runs/hot_sql.py claim_runs) and its events; the runs as
    ClaimedRun rows. None when the database refused the statement (a row it cannot move): then
    _claim_with_the_orm moves what it can, one run at a time if need be.

    The statement is a transaction of its own where runs.states.own_transaction_will_do says so and
    no queue's limit has to be locked and counted before it, in one transaction with it."""
    message = _claim_message(agent)
    capped = any(cap is not None for _, cap in open_queues)
    try:
        with nullcontext() if not capped and own_transaction_will_do() else transaction.atomic():
            slots = _free_queues(open_queues)
            if not slots:
                return []
            rows = hot_sql.claim_runs(agent.pk, [pk for pk, free in slots.items() if free is None],
                                      [(pk, free) for pk, free in slots.items() if free is not None],
                                      limit, now, message, Actor.AGENT, flow_run_event_name(State.SUBMITTED))
            after = len(ClaimedRun._fields)  # each run's event follows ClaimedRun's columns
            emit([Encoded(row[after]) for row in rows])
    except CONNECTION_ERRORS:
        raise
    except DatabaseError:
        logger.warning("Agent %s's claim failed as one statement; claiming through the ORM.", agent.name,
                       exc_info=True)
        return None
    return [ClaimedRun._make(row[:after]) for row in rows]


def _claim_with_the_orm(agent, open_queues, limit, now):
    """The claim through runs.states' transition (the twin of _claim_in_one_statement, and the claim on
    SQLite): the due runs picked and locked, moved, then read again to be handed out."""
    with transaction.atomic():
        slots = _free_queues(open_queues)
        if not slots:
            return []
        due = _due(now)
        # One pick for all unlimited queues, one per limited queue capped at its free slots; then the
        # oldest `limit` of them. The ids are picked first, then moved: as a subquery of the move (`id
        # IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`) PostgreSQL may run the pick again for each
        # row it joins, and a row another transaction released meanwhile then joins too, moving more
        # than `limit` runs.
        picks = []
        free_queues = [qid for qid, free in slots.items() if free is None]
        if free_queues:
            picks += due.filter(work_queue_id__in=free_queues).values_list("pk", "scheduled_start")[:limit]
        for qid, free in slots.items():
            if free is not None:
                picks += due.filter(work_queue_id=qid).values_list("pk", "scheduled_start")[: min(free, limit)]
        chosen = [pk for pk, _ in sorted(picks, key=lambda p: p[1])[:limit]]
        if not chosen:
            return []
        moved = _submit_to(agent, hot_sql.pk_in(chosen), now)
    return handed_out(agent, [row["pk"] for row in moved])


def _due(now):
    """Due runs, oldest first, locked as they are read; rows another claim holds are skipped."""
    return (FlowRun.objects.alive().filter(state__in=CLAIMABLE, scheduled_start__lte=now).order_by("scheduled_start")
            .select_for_update(skip_locked=True, of=("self",)))


def _submit_to(agent, chosen, now):
    """Move the runs `chosen` (a filter() condition) that are still claimable to SUBMITTED for `agent`;
    returns the rows moved (runs.states.transition_flow_runs)."""
    return transition_flow_runs(
        FlowRun.objects.filter(chosen, state__in=CLAIMABLE), State.SUBMITTED,
        actor=Actor.AGENT, message=_claim_message(agent), now=now,
        # The version is decided here: the schedule's pin, else the flow's latest now
        # (runs.versions.version_at_claim, written out).
        updates={"agent_id": agent.pk, "flow_version_id": hot_sql.version_at_claim()},
    )
