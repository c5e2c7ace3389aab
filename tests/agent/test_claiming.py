"""claim_due_runs: which runs an agent gets, and that two agents never get the same one."""

import json
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from runs.claiming import claim_due_runs
from runs.models import Actor, FlowRun, Role, State, StateChange, TaskRun, WorkQueue
from tests import factories


def agent_on(ws, *queues):
    agent = factories.agent(ws)
    agent.queues.set(queues)
    return agent


def due_runs(flow, queue, count, now, **kw):
    return [factories.flow_run(flow, work_queue=queue, scheduled_start=now - timedelta(seconds=count - i), **kw)
            for i in range(count)]


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def flow(ws):
    return factories.flow(ws)


def test_claims_due_runs_oldest_first_and_moves_them_to_submitted(ws, flow, now):
    queue = factories.work_queue(ws)
    runs = due_runs(flow, queue, 3, now)
    agent = agent_on(ws, queue)
    claimed = claim_due_runs(agent, limit=2, now=now)
    assert [r.pk for r in claimed] == [runs[0].pk, runs[1].pk]
    assert all(r.state == State.SUBMITTED and r.agent_id == agent.pk for r in claimed)
    assert FlowRun.objects.get(pk=runs[2].pk).state == State.SCHEDULED


def test_late_runs_are_claimed_and_future_runs_are_not(ws, flow, now):
    queue = factories.work_queue(ws)
    late = factories.flow_run(flow, state=State.LATE, work_queue=queue, scheduled_start=now - timedelta(minutes=5))
    factories.flow_run(flow, work_queue=queue, scheduled_start=now + timedelta(minutes=5))
    assert [r.pk for r in claim_due_runs(agent_on(ws, queue), limit=10, now=now)] == [late.pk]


def test_only_the_agents_queues_are_claimed(ws, flow, now):
    mine, theirs = factories.work_queue(ws), factories.work_queue(ws)
    due_runs(flow, theirs, 2, now)
    assert claim_due_runs(agent_on(ws, mine), limit=10, now=now) == []


def test_a_paused_queue_hands_out_nothing_but_records_the_poll(ws, flow, now):
    queue = factories.work_queue(ws, paused=True)
    due_runs(flow, queue, 2, now)
    assert claim_due_runs(agent_on(ws, queue), limit=10, now=now) == []
    queue.refresh_from_db()
    assert queue.last_polled == now


def test_the_queue_concurrency_limit_counts_runs_already_active(ws, flow, now):
    queue = factories.work_queue(ws, concurrency_limit=3)
    factories.flow_run(flow, state=State.RUNNING, work_queue=queue)
    due_runs(flow, queue, 5, now)
    agent = agent_on(ws, queue)
    assert len(claim_due_runs(agent, limit=10, now=now)) == 2
    assert claim_due_runs(agent, limit=10, now=now) == []


def test_claims_mix_limited_and_unlimited_queues(ws, flow, now):
    limited, open_queue = factories.work_queue(ws, concurrency_limit=1), factories.work_queue(ws)
    due_runs(flow, limited, 3, now)
    due_runs(flow, open_queue, 3, now)
    claimed = claim_due_runs(agent_on(ws, limited, open_queue), limit=10, now=now)
    assert sorted(r.work_queue_id for r in claimed) == sorted([limited.pk] + [open_queue.pk] * 3)


def test_claiming_writes_history_with_the_agent_as_actor(ws, flow, now):
    queue = factories.work_queue(ws)
    [run] = due_runs(flow, queue, 1, now)
    agent = agent_on(ws, queue)
    claim_due_runs(agent, limit=1, now=now)
    change = StateChange.objects.get(flow_run=run)
    assert (change.from_state, change.to_state, change.actor) == ("SCHEDULED", "SUBMITTED", Actor.AGENT)
    assert agent.name in change.message


def test_the_orm_claim_hands_out_only_runs_left_to_it_after_its_commit(ws, flow, now, monkeypatch):
    """The ORM's claim (SQLite's, PostgreSQL's fallback) reads the runs again after its UPDATE: one
    changed by another request in between is not handed out."""
    from runs import claiming

    queue = factories.work_queue(ws)
    kept, cancelled, taken, deleted = due_runs(flow, queue, 4, now)
    agent, other = agent_on(ws, queue), agent_on(ws, queue)
    real_transition = claiming.transition_flow_runs

    def then_others_act(*args, **kwargs):  # what other requests may commit just after the claim's UPDATE
        moved = real_transition(*args, **kwargs)
        FlowRun.objects.filter(pk=cancelled.pk).update(state=State.CANCELLED)
        FlowRun.objects.filter(pk=taken.pk).update(agent=other)
        FlowRun.objects.filter(pk=deleted.pk).update(deleted_at=now)
        return moved

    monkeypatch.setattr(claiming, "transition_flow_runs", then_others_act)
    assert [r.pk for r in claiming._claim_with_the_orm(agent, [(queue.pk, None)], limit=10, now=now)] == [kept.pk]


def test_a_run_claimed_earlier_and_cancelled_meanwhile_is_not_handed_out_again(ws, flow, now, monkeypatch):
    from runs import claiming

    queue = factories.work_queue(ws)
    first, second = due_runs(flow, queue, 2, now)
    agent = agent_on(ws, queue)
    assert len(claim_due_runs(agent, limit=10, now=now)) == 2  # the answer is lost, say
    real_claim = claiming.claim_due_runs

    def then_one_is_cancelled(*args, **kwargs):  # after the read of the agent's own runs
        claimed = real_claim(*args, **kwargs)
        FlowRun.objects.filter(pk=second.pk).update(state=State.CANCELLED)
        return claimed

    monkeypatch.setattr(claiming, "claim_due_runs", then_one_is_cancelled)
    claim = claiming.claim_for_agent(agent, limit=10, now=now)
    assert [r.pk for r in claim.runs] == [first.pk]


def test_a_claim_takes_a_constant_number_of_queries(ws, flow, now):
    counts = []
    for size in (5, 50):
        queue = factories.work_queue(ws)
        due_runs(flow, queue, size, now)
        agent = agent_on(ws, queue)
        with CaptureQueriesContext(connection) as captured:
            assert len(claim_due_runs(agent, limit=size, now=now)) == size
        counts.append(len(captured.captured_queries))
    assert counts[0] == counts[1] <= 15


def test_two_agents_taking_turns_never_claim_the_same_run(ws, flow, now):
    queue = factories.work_queue(ws)
    due_runs(flow, queue, 200, now)
    agents = [agent_on(ws, queue), agent_on(ws, queue)]
    seen = []
    for turn in range(20):
        seen += [r.pk for r in claim_due_runs(agents[turn % 2], limit=13, now=now)]
    assert len(seen) == len(set(seen)) == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_agents_claiming_at_once_over_the_api_get_every_run_exactly_once():
    """Two agents in two threads, each with its own connection, claim and complete through the API."""
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED concurrency needs PostgreSQL")
    ws = factories.workspace()
    flow, queue, now = factories.flow(ws), factories.work_queue(ws), timezone.now()
    due_runs(flow, queue, 200, now)
    agents = [agent_on(ws, queue), agent_on(ws, queue)]
    secret = factories.api_key(ws, role=Role.AGENT)[1]
    prefix = f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}/agent"
    claimed = {agent.pk: [] for agent in agents}
    start = threading.Barrier(2)

    def work(agent):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        start.wait()
        try:
            while runs := api.post(f"{prefix}/claim", {"agent_id": agent.pk, "max_runs": 7},
                                   format="json").json()["runs"]:
                for run in runs:
                    claimed[agent.pk].append(run["id"])
                    runner = APIClient()  # reports with the run's token, as its runner does
                    runner.credentials(HTTP_AUTHORIZATION=f"Bearer {run['token']}")
                    for state in ("RUNNING", "COMPLETED"):
                        answer = runner.post(f"{prefix}/flow_runs/{run['id']}/state", {"state": state},
                                             format="json")
                        assert answer.status_code == 200, answer.content
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(agent,)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = claimed[agents[0].pk] + claimed[agents[1].pk]
    assert len(everything) == len(set(everything)) == 200
    assert all(claimed.values()), "both agents should have claimed some runs"
    assert FlowRun.objects.filter(state=State.COMPLETED).count() == 200
    assert StateChange.objects.filter(to_state=State.SUBMITTED).count() == 200
    assert StateChange.objects.filter(to_state=State.COMPLETED).count() == 200


def test_claim_reads_the_handed_out_runs_by_hand_as_the_orm_would(ws, flow, now):
    """runs/hot_sql.py claimed_run_rows (PostgreSQL) against its ORM twin: a run with a version, queue
    environments and parameters, one without a version, one without a queue, one deleted, one of
    another agent."""
    from runs import claiming, hot_sql
    from runs.models import FlowVersion

    queue = factories.work_queue(ws, job_env={"REGION": "eu"})
    FlowVersion.objects.filter(pk=flow.latest_version.pk).update(parameters={"a": 1}, job_env={"TIER": "flow"},
                                                                 secrets=["DB"])
    agent, other = agent_on(ws, queue), agent_on(ws, queue)
    runs = [factories.flow_run(flow, state=State.SUBMITTED, agent=agent, work_queue=queue, parameters={"b": 2},
                               scheduled_start=now - timedelta(seconds=5)),
            factories.flow_run(flow, state=State.SUBMITTED, agent=agent, work_queue=queue, flow_version=None,
                               scheduled_start=now - timedelta(seconds=4)),
            factories.flow_run(flow, state=State.SUBMITTED, agent=agent, work_queue=None,
                               scheduled_start=now - timedelta(seconds=3)),
            factories.flow_run(flow, state=State.SUBMITTED, agent=agent, work_queue=queue, deleted_at=now),
            factories.flow_run(flow, state=State.SUBMITTED, agent=other, work_queue=queue)]
    ids = [run.pk for run in runs]
    twin = list(FlowRun.objects.alive().filter(pk__in=ids, agent=agent, state=State.SUBMITTED)
                .order_by("scheduled_start").values_list(*claiming._CLAIMED_RUN_FIELDS))
    assert [row[0] for row in twin] == ids[:3]
    assert FlowVersion.objects.filter(pk=twin[0][9]).exists()
    if connection.vendor != "postgresql":
        pytest.skip("the hand-written read is PostgreSQL's; SQLite reads with the ORM")
    assert hot_sql.claimed_run_rows(agent.pk, ids) == twin


def test_the_claims_version_is_the_orm_version_at_claim(ws, flow, now):
    """runs/hot_sql.py version_at_claim against runs.versions.version_at_claim: a run without a
    schedule, of a following schedule, of a pinned one, of a deleted one, of a flow without a latest."""
    from runs import hot_sql
    from runs.versions import version_at_claim

    first = flow.latest_version
    flow.register_version(entrypoint="tests.flows:noop", version="2")
    following, pinned, deleted = (factories.schedule(flow), factories.schedule(flow, flow_version=first),
                                  factories.schedule(flow, flow_version=first))
    deleted.deleted_at = now
    deleted.save()
    bare = factories.flow(ws)
    bare.versions.update(is_latest=False)
    runs = [factories.flow_run(flow, flow_version=first),
            *(factories.flow_run(flow, schedule=s, flow_version=first) for s in (following, pinned, deleted)),
            factories.flow_run(bare, schedule=factories.schedule(bare))]
    ids = [run.pk for run in runs]
    by_orm = dict(FlowRun.objects.filter(pk__in=ids).annotate(v=version_at_claim()).values_list("pk", "v"))
    by_hand = dict(FlowRun.objects.filter(pk__in=ids).annotate(v=hot_sql.version_at_claim()).values_list("pk", "v"))
    assert by_hand == by_orm
    assert [by_orm[pk] for pk in ids] == [first.pk, flow.latest_version.pk, first.pk, flow.latest_version.pk,
                                          runs[4].flow_version_id]


def test_a_bulk_transition_writes_one_history_row_per_row_moved_with_its_own_from_state(ws, flow, now):
    """The history's INSERT … SELECT (runs/hot_sql.py) reads each row's from-state before the UPDATE,
    for flow runs and for task runs."""
    from runs.states import transition_flow_runs, transition_task_runs

    scheduled, late = factories.flow_run(flow), factories.flow_run(flow, state=State.LATE)
    moved = transition_flow_runs(FlowRun.objects.filter(pk__in=[scheduled.pk, late.pk]), State.CANCELLED,
                                 actor=Actor.USER, message="Stop.", now=now)
    assert len(moved) == 2
    assert set(StateChange.objects.filter(flow_run__in=[scheduled, late]).values_list(
        "flow_run_id", "task_run_id", "from_state", "to_state", "message", "actor", "user_id", "agent_id",
        "timestamp")) == {(scheduled.pk, None, "SCHEDULED", "CANCELLED", "Stop.", Actor.USER, None, None, now),
                          (late.pk, None, "LATE", "CANCELLED", "Stop.", Actor.USER, None, None, now)}
    running = factories.flow_run(flow, state=State.RUNNING)
    task = factories.task_run(running)
    transition_task_runs(TaskRun.objects.filter(pk=task.pk), State.CRASHED, actor=Actor.USER, message="Gone.", now=now)
    assert list(StateChange.objects.filter(task_run=task).values_list("flow_run_id", "from_state", "to_state")) == [
        (running.pk, "RUNNING", "CRASHED")]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_claim_never_moves_more_than_its_limit_when_a_held_run_is_released_mid_claim(ws):
    """The unlimited queues' pick is fixed before the move. As a subquery of the move (`id IN (SELECT
    … LIMIT n FOR UPDATE SKIP LOCKED)`), PostgreSQL may run the pick again for each row it joins, on a
    small table by its own choice (forced here on a larger one, so that the release lands inside the
    statement): a due run another transaction held at the first pick and released meanwhile then
    joined the set, and the claim moved limit + 1 runs (found by review, 2026-12-07)."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's plans and row locks")
    queue = WorkQueue.objects.create(workspace=ws, name="default")
    agent = factories.agent(ws)
    agent.queues.add(queue)
    flow = factories.flow(ws)
    now = timezone.now()
    for i in range(5):
        factories.flow_run(flow, work_queue=queue, scheduled_start=now - timedelta(seconds=10 - i))
    FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, work_queue=queue, state=State.SCHEDULED,
                                         scheduled_start=now + timedelta(days=1), name="not due")
                                 for _ in range(60_000)])
    held = factories.flow_run(flow, work_queue=queue, scheduled_start=now - timedelta(seconds=100))
    locked, release = threading.Event(), threading.Event()

    def another_service():
        try:
            with transaction.atomic():
                list(FlowRun.objects.filter(pk=held.pk).select_for_update())
                locked.set()
                release.wait(10)
                FlowRun.objects.filter(pk=held.pk).update(state=State.LATE)  # still claimable
        finally:
            connections.close_all()

    with connection.cursor() as cursor:  # the nested-loop plan PostgreSQL picks for a small table
        cursor.execute("SET enable_hashagg = off; SET enable_hashjoin = off; SET enable_mergejoin = off; "
                       "SET enable_material = off; SET enable_sort = off")
    thread = threading.Thread(target=another_service)
    thread.start()
    assert locked.wait(10)
    threading.Timer(0.12, release.set).start()
    try:
        claimed = claim_due_runs(agent, limit=5, now=now)
    finally:
        release.set()
        thread.join()
        with connection.cursor() as cursor:
            cursor.execute("RESET ALL")
    assert len(claimed) == 5
    assert FlowRun.objects.filter(agent=agent, state=State.SUBMITTED).count() == 5


def test_a_run_cancelled_just_after_its_claim_is_never_started(ws, flow, now):
    """A claim answers the runs it moved; one cancelled by a user a moment after the claim committed
    (before or after the answer left) is refused at its runner's first report, before any code runs."""
    queue = factories.work_queue(ws)
    agent = agent_on(ws, queue)
    run, other = due_runs(flow, queue, 2, now)
    agent_client = APIClient()
    agent_client.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.api_key(ws, role=Role.AGENT)[1]}")
    user = APIClient()
    user.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.api_key(ws, role=Role.OPERATOR)[1]}")
    prefix = f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}"
    answer = agent_client.post(f"{prefix}/agent/claim", {"agent_id": agent.pk, "max_runs": 5}, format="json").json()
    tokens = {claimed["id"]: claimed["token"] for claimed in answer["runs"]}
    assert set(tokens) == {str(run.pk), str(other.pk)}
    assert user.post(f"{prefix}/flow_runs/{run.pk}/cancel/").status_code == 200
    runner = APIClient()
    runner.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens[str(run.pk)]}")
    refused = runner.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": "RUNNING"}, format="json")
    assert refused.status_code == 409 and refused.json()["current_state"] in (State.CANCELLING, State.CANCELLED)
    runner.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens[str(other.pk)]}")
    assert runner.post(f"{prefix}/agent/flow_runs/{other.pk}/state", {"state": "RUNNING"},
                       format="json").status_code == 200


class _Undone(Exception):
    pass


def _claimed_and_written(claim, ids, monkeypatch):
    """What `claim()` answers, writes and emits, undone afterwards: (answer, runs, history, events)."""
    from events.emit import encoded
    from runs import claiming, states

    emitted = []

    def emit(events):  # as the buffer would read them back (the one statement's come encoded)
        emitted.extend(json.loads(encoded(event)) for event in events)

    monkeypatch.setattr(claiming, "emit", emit)
    monkeypatch.setattr(states, "emit", emit)
    try:
        with transaction.atomic():
            answer = claim()
            runs = list(FlowRun.objects.filter(pk__in=ids).order_by("scheduled_start").values())
            history = list(StateChange.objects.filter(flow_run__in=ids).order_by("flow_run__scheduled_start")
                           .values("flow_run_id", "task_run_id", "from_state", "to_state", "message", "actor",
                                   "user_id", "agent_id", "timestamp"))
            ids = {str(uuid.UUID(event["id"], version=4)) for event in emitted}  # well-formed, as the buffer keeps them
            assert len(ids) == len(emitted) and ids == {event["id"] for event in emitted}
            seen = (answer, runs, history, sorted(({k: v for k, v in event.items() if k != "id"} for event in emitted),
                                                  key=lambda event: event["resource"]["id"]))
            raise _Undone
    except _Undone:
        return seen


@pytest.mark.parametrize("limit", [None, 3], ids=["queue without a limit", "queue with a limit"])
def test_the_one_statement_claim_writes_and_answers_what_the_orm_claim_does(ws, now, limit, monkeypatch):
    """runs/hot_sql.py claim_runs (PostgreSQL's claim) against its ORM twin, on the same rows: a run with
    parameters, a LATE one another agent had, runs of a pinned and of a following schedule, one
    without a version, one of another queue and one not due; each claim undone before the next."""
    from runs import claiming
    from runs.models import FlowVersion

    if connection.vendor != "postgresql":
        pytest.skip("the one-statement claim is PostgreSQL's; SQLite claims through the ORM")
    flow = factories.flow(ws)
    first = flow.latest_version
    latest = flow.register_version(entrypoint="tests.flows:noop", version="2")
    FlowVersion.objects.filter(pk=latest.pk).update(parameters={"a": 1}, job_env={"TIER": "flow"}, secrets=["DB"])
    queue = factories.work_queue(ws, job_env={"REGION": "eu"}, concurrency_limit=limit)
    before = factories.agent(ws)
    agent = agent_on(ws, queue)
    runs = [factories.flow_run(flow, work_queue=queue, parameters={"b": 2}, scheduled_start=now - timedelta(seconds=50)),
            factories.flow_run(flow, work_queue=queue, state=State.LATE, agent=before,
                               scheduled_start=now - timedelta(seconds=40)),
            factories.flow_run(flow, work_queue=queue, schedule=factories.schedule(flow, flow_version=first),
                               flow_version=first, scheduled_start=now - timedelta(seconds=30)),
            factories.flow_run(flow, work_queue=queue, schedule=factories.schedule(flow), flow_version=first,
                               scheduled_start=now - timedelta(seconds=20)),
            factories.flow_run(flow, work_queue=queue, flow_version=None, scheduled_start=now - timedelta(seconds=10)),
            factories.flow_run(flow, work_queue=factories.work_queue(ws), scheduled_start=now - timedelta(seconds=5)),
            factories.flow_run(flow, work_queue=queue, scheduled_start=now + timedelta(minutes=1))]
    ids = [run.pk for run in runs]
    queues = [(queue.pk, limit)]
    by_hand = _claimed_and_written(lambda: claiming._claim_in_one_statement(agent, queues, limit=10, now=now),
                                   ids, monkeypatch)
    by_orm = _claimed_and_written(lambda: claiming._claim_with_the_orm(agent, queues, limit=10, now=now),
                                  ids, monkeypatch)
    claimed = ids[:3] if limit else ids[:5]
    assert [run.pk for run in by_orm[0]] == claimed
    assert [len(seen) for seen in by_orm[1:]] == [len(ids), len(claimed), len(claimed)]
    assert by_hand == by_orm


def _refuse_updates_of(run_id):
    """A trigger that makes PostgreSQL refuse any UPDATE of the run `run_id` (a row it cannot move)."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE FUNCTION test_refuse_claim() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'this run cannot move'; END $$")
        cursor.execute(f"CREATE TRIGGER test_refuse_claim BEFORE UPDATE ON {FlowRun._meta.db_table} FOR EACH ROW "
                       f"WHEN (OLD.id = '{run_id}') EXECUTE FUNCTION test_refuse_claim()")


def _claim_around_a_refused_run(ws, caplog):
    flow, queue, now = factories.flow(ws), factories.work_queue(ws), timezone.now()
    runs = due_runs(flow, queue, 4, now)
    _refuse_updates_of(runs[1].pk)
    claimed = claim_due_runs(agent_on(ws, queue), limit=10, now=now)
    assert [run.pk for run in claimed] == [runs[0].pk, runs[2].pk, runs[3].pk]
    assert FlowRun.objects.get(pk=runs[1].pk).state == State.SCHEDULED
    assert "claiming through the ORM" in caplog.text


def test_a_run_the_database_refuses_to_move_leaves_the_others_claimed(ws, caplog):
    """The one statement fails as a whole (inside the caller's transaction: a savepoint); the ORM's
    claim then moves the runs it can, one at a time."""
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement claim is PostgreSQL's; SQLite claims through the ORM")
    _claim_around_a_refused_run(ws, caplog)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_refused_run_outside_a_transaction_leaves_the_others_claimed(caplog):
    """As above with no transaction open, as a request claims: the failed statement undid itself."""
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement claim is PostgreSQL's; SQLite claims through the ORM")
    try:
        _claim_around_a_refused_run(factories.workspace(), caplog)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS test_refuse_claim ON {FlowRun._meta.db_table}; "
                           "DROP FUNCTION IF EXISTS test_refuse_claim()")


class _Died(BaseException):
    """The process dying right after the claim's commit, before anything after it ran."""


@pytest.mark.django_db(transaction=True)
def test_without_redis_a_claims_events_commit_with_it(settings, monkeypatch):
    """No REDIS_URL (the embedded buffer): the claim's events are buffer rows written in the claim's
    own transaction, so a process that dies just after the commit loses none (a review found the
    one-statement claim committing first and writing them after)."""
    from events import buffer
    from events import emit as events_emit
    from events.models import PendingEvent

    settings.REDIS_URL = ""
    buffer.reset()
    monkeypatch.setattr(events_emit, "_push", lambda events: (_ for _ in ()).throw(_Died()))
    ws = factories.workspace()
    flow, queue, now = factories.flow(ws), factories.work_queue(ws), timezone.now()
    runs = due_runs(flow, queue, 3, now)
    agent = agent_on(ws, queue)
    WorkQueue.objects.filter(pk=queue.pk).update(last_polled=now)  # no poll event: only the claim's
    try:
        claimed = claim_due_runs(agent, limit=10, now=now)
    except _Died:
        claimed = None  # whatever was to run after the commit did not
    assert claimed is None or len(claimed) == 3
    assert FlowRun.objects.filter(agent=agent, state=State.SUBMITTED).count() == 3
    buffered = [body for body in PendingEvent.objects.values_list("body", flat=True)
                if body["name"] == "flow-run.state.submitted"]
    assert sorted(body["resource"]["id"] for body in buffered) == sorted(str(run.pk) for run in runs)
    buffer.reset()
