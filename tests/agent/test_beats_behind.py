"""Flow-run heartbeats written behind (runs/beats_behind.py): on PostgreSQL, a beat of a run the
process viewed lately is answered from its view with no statement, and written with every other
beat, and every viewed run read again, in one statement per interval. Whatever the view cannot
answer as the database would goes to the database in the request."""

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import requests
from django.conf import settings
from django.db import OperationalError, connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs import beats_behind as module
from runs import hot_sql
from runs.api.agents import record_flow_run_heartbeat
from runs.beats_behind import beats_behind
from runs.models import FlowRun, State
from runs.run_tokens import token_for
from tests.agent.conftest import REPO, free_port, wait_for
from tests.agent.test_api import due_run
from tests.agent.test_hot_lane import beat, current_token

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("beats are written behind on PostgreSQL only")


@pytest.fixture
def behind(settings):
    """Beats written behind, the thread listening but writing only when the test says (write_now)."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "HEARTBEAT_WRITE_BEHIND_SECONDS": 60}


def heartbeat_of(run):
    return FlowRun.objects.values_list("last_heartbeat", flat=True).get(pk=run.pk)


def record(run, now=None, generation=None):
    """The beat of `run` (of its attempt as loaded) as the API records it: its answer's state, or None."""
    return record_flow_run_heartbeat(run.pk, run.workspace_id, now or timezone.now(),
                                     run.token_generation if generation is None else generation)


def viewed(run):
    """Beat `run` until this process's view holds it: the first beat starts the thread listening,
    the next one read once it listens enters the view."""
    wait_for(lambda: record(run) and run.pk in beats_behind._view and beats_behind.answering(), timeout=10,
             what="the run to be viewed")


def left_the_view(run):
    wait_for(lambda: run.pk not in beats_behind._view, timeout=10, what="the run to leave the view")


def test_the_database_announces_what_a_view_must_forget_and_nothing_else(ws):
    """Migration 0020's triggers: a change of state or attempt from one of VIEWED_STATES, one
    announcement with the run's id; any deletion, "*"; a claim's change or a beat, nothing."""
    db = connection
    db.ensure_connection()
    listener = db.get_new_connection(db.get_connection_params())
    listener.autocommit = True
    listener.execute(f"LISTEN {module.CHANNEL}")

    def announced():
        time.sleep(0.2)
        return [notice.payload for notice in listener.notifies(timeout=0.3)]

    try:
        runs = {state: due_run(ws, state=state) for state in (State.SCHEDULED, State.RUNNING, State.CANCELLING,
                                                               State.PAUSED)}
        assert announced() == []  # created: nothing a view holds
        FlowRun.objects.filter(pk=runs[State.SCHEDULED].pk).update(state=State.SUBMITTED)  # a claim
        FlowRun.objects.filter(pk=runs[State.PAUSED].pk).update(state=State.RUNNING)
        FlowRun.objects.filter(pk=runs[State.RUNNING].pk).update(last_heartbeat=timezone.now())  # a beat
        FlowRun.objects.filter(pk=runs[State.RUNNING].pk).update(name="renamed")
        assert announced() == []
        FlowRun.objects.filter(pk=runs[State.RUNNING].pk).update(state=State.FAILED)
        FlowRun.objects.filter(pk=runs[State.CANCELLING].pk).update(token_generation=5)
        assert announced() == [str(runs[State.RUNNING].pk), str(runs[State.CANCELLING].pk)]
        FlowRun.objects.filter(pk=runs[State.CANCELLING].pk).update(work_queue=None)  # its queue deleted
        FlowRun.objects.filter(pk=runs[State.SCHEDULED].pk).update(work_queue=None)  # not viewed
        assert announced() == [str(runs[State.CANCELLING].pk)]
        FlowRun.objects.filter(pk__in=[run.pk for run in runs.values()]).delete()
        assert announced() == ["*"]
    finally:
        listener.close()
    assert set(module.VIEWED_STATES) == {State.RUNNING, State.CANCELLING}  # as the migration names them


def test_a_viewed_run_s_beat_is_answered_without_a_statement_and_written_with_the_others(ws, behind, monkeypatch):
    run = due_run(ws, state=State.RUNNING)
    # The last write long ago (the process idle for minutes): a new thread answers from its first turn.
    monkeypatch.setattr(beats_behind, "_written_at", time.monotonic() - 1000)
    viewed(run)
    first = heartbeat_of(run)
    later = timezone.now() + timedelta(seconds=30)
    with CaptureQueriesContext(connection) as queries:
        assert record(run, later) == State.RUNNING
    assert len(queries) == 0
    assert heartbeat_of(run) == first and beats_behind.pending() == 1
    assert beats_behind.write_now()
    assert heartbeat_of(run) == later and beats_behind.pending() == 0


def test_one_statement_writes_every_pending_beat(ws, behind):
    def one_pass(count):
        runs = [due_run(ws, state=State.RUNNING) for _ in range(count)]
        for run in runs:
            viewed(run)
        moment = timezone.now() + timedelta(seconds=1)
        for run in runs:
            assert record(run, moment) == State.RUNNING
        with CaptureQueriesContext(connection) as queries:
            assert beats_behind.write_now()
        assert [heartbeat_of(run) for run in runs] == [moment] * count
        return len(queries)

    assert one_pass(2) == one_pass(40) == 1


def test_a_cancellation_made_elsewhere_is_the_next_answer(ws, behind, reporter, prefix):
    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    FlowRun.objects.filter(pk=run.pk).update(state=State.CANCELLING)  # another process's change, committed
    left_the_view(run)  # announced: no write, no read by this process needed
    assert beat(reporter.client, prefix, run.pk, current_token(run)).json() == {"state": "CANCELLING"}


def test_a_run_announced_changed_after_a_beat_s_read_was_sent_is_not_viewed(ws, behind):
    run = due_run(ws, state=State.RUNNING)
    record(run)
    wait_for(lambda: beats_behind.mark() is not None, timeout=10, what="the thread to listen")
    mark = beats_behind.mark()
    row = (State.RUNNING, run.flow_id, run.work_queue_id, run.agent_id)
    beats_behind._announced(str(run.pk))  # the change's announcement, taken before the beat's answer is
    beats_behind.learn(run.pk, run.workspace_id, run.token_generation, row, mark)
    assert run.pk not in beats_behind._view
    beats_behind.learn(run.pk, run.workspace_id, run.token_generation, row, beats_behind.mark())
    assert run.pk in beats_behind._view
    beats_behind._stop_listening(None)  # the listener lost: nothing read before counts
    assert run.pk not in beats_behind._view
    beats_behind.learn(run.pk, run.workspace_id, run.token_generation, row, mark)
    assert run.pk not in beats_behind._view


def test_while_writes_fail_the_view_does_not_answer(ws, behind, monkeypatch):
    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    first = heartbeat_of(run)
    moment = first + timedelta(seconds=1)
    assert record(run, moment) == State.RUNNING  # from the view

    def down(beats):
        raise OperationalError("the database is gone")

    monkeypatch.setattr(hot_sql, "write_beats", down)
    assert beats_behind.write_now() is False
    assert beats_behind.pending() == 1 and heartbeat_of(run) == first
    monkeypatch.setattr(beats_behind, "_written_at", time.monotonic() - 60 * module.MAX_AGE_INTERVALS - 1)
    later = moment + timedelta(seconds=1)
    assert record(run, later) == State.RUNNING and heartbeat_of(run) == later  # in the request
    monkeypatch.undo()
    assert beats_behind.write_now()
    assert heartbeat_of(run) == later  # the kept beat, earlier, did not move it back


def test_after_the_database_dropped_both_connections_the_view_answers_again(ws, settings):
    """As when PostgreSQL restarts: the listener's and the statements' connections both gone, and
    no beat pending (a failed write would have replaced the statements' connection by itself)."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "HEARTBEAT_WRITE_BEHIND_SECONDS": 0.2}
    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    assert beats_behind.write_now() and beats_behind.pending() == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
    wait_for(lambda: beats_behind.mark() is None, timeout=10, what="the listener to be lost")
    viewed(run)


def test_a_listener_that_does_not_hear_its_own_announcements_answers_nothing(ws, behind, monkeypatch):
    """As behind a pooler in transaction mode, where a LISTEN does not outlive its transaction."""
    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    monkeypatch.setattr(module, "PING_EVERY_SECONDS", 0.1)
    monkeypatch.setattr(module, "LISTENER_TRUSTED_SECONDS", 0.5)
    monkeypatch.setattr(module.BeatsBehind, "_ping", lambda self: None)  # its tokens never come back
    beats_behind._pinged_back_at = time.monotonic()
    wait_for(lambda: not beats_behind.answering(), timeout=10, what="the listener to lose trust")
    moment = timezone.now()
    assert record(run, moment) == State.RUNNING and heartbeat_of(run) == moment  # in the request
    assert beats_behind.pending() == 0


def test_an_earlier_attempt_s_token_is_superseded_though_the_run_was_viewed(ws, behind, reporter, prefix):
    run = due_run(ws, state=State.RUNNING)
    stale = current_token(run)
    viewed(run)
    FlowRun.objects.filter(pk=run.pk).update(token_generation=run.token_generation + 1)  # Lazarus, elsewhere
    left_the_view(run)
    answer = beat(reporter.client, prefix, run.pk, stale)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "superseded"
    before = heartbeat_of(run)
    assert beat(reporter.client, prefix, run.pk, current_token(run)).json() == {"state": "RUNNING"}
    assert heartbeat_of(run) > before


def test_a_beat_with_another_workspace_is_not_the_view_s(ws, behind):
    from tests import factories

    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    other = factories.workspace()
    assert record_flow_run_heartbeat(run.pk, other.pk, timezone.now(), run.token_generation) is None


def test_a_deleted_or_ended_run_leaves_the_view_at_once(ws, behind, reporter, prefix):
    gone, ended = due_run(ws, state=State.RUNNING), due_run(ws, state=State.RUNNING)
    gone_token = current_token(gone)
    viewed(ended)
    FlowRun.objects.filter(pk=ended.pk).update(state=State.COMPLETED)
    left_the_view(ended)
    viewed(gone)
    FlowRun.objects.filter(pk=gone.pk).delete()
    left_the_view(gone)
    assert beat(reporter.client, prefix, gone.pk, gone_token).status_code == 404
    assert record(ended) == State.COMPLETED


def test_a_viewed_run_whose_queue_is_deleted_beats_with_no_queue(ws, behind, flush_events):
    """The queue's deletion sets the run's column to NULL, no change of state: the event of the
    run's next beat names no queue, as the database's answer would."""
    from runs.models import WorkQueue

    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    WorkQueue.objects.filter(pk=run.work_queue_id).delete()
    left_the_view(run)
    before = len([e for e in flush_events() if e.name == "flow-run.heartbeat"])
    record(run)
    beats = [e for e in flush_events() if e.name == "flow-run.heartbeat"]
    assert len(beats) == before + 1
    assert {r["kind"] for r in max(beats, key=lambda e: e.occurred).related} == {"flow"}


def test_while_the_thread_s_write_waits_for_a_lock_a_change_is_still_the_next_answer(ws, settings):
    """The thread's write waits for a run's row that a transaction holds; meanwhile another run is
    cancelled. Its announcement waits for the thread: the view must not answer that run's beats."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "HEARTBEAT_WRITE_BEHIND_SECONDS": 1}
    held, cancelled = due_run(ws, state=State.RUNNING), due_run(ws, state=State.RUNNING)
    viewed(held), viewed(cancelled)
    db = connection
    locker = db.get_new_connection(db.get_connection_params())
    try:
        locker.execute(f"SELECT 1 FROM {FlowRun._meta.db_table} WHERE id = %s FOR UPDATE", [held.pk])
        assert record(held, timezone.now() + timedelta(seconds=1)) == State.RUNNING  # from the view
        wait_for(lambda: beats_behind.pending() == 0, timeout=10, what="the thread to take the beat")
        time.sleep(0.2)  # its write now waits for the lock
        FlowRun.objects.filter(pk=cancelled.pk).update(state=State.CANCELLING)
        time.sleep(2 * module.TAKE_EVERY_SECONDS)
        assert record(cancelled) == State.CANCELLING
    finally:
        locker.rollback()
        locker.close()
    assert beats_behind.write_now()


def test_a_beat_never_moves_the_heartbeat_back(ws, behind):
    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    later = timezone.now() + timedelta(seconds=10)
    record(run, later)
    beats_behind.write_now()
    record(run, later - timedelta(seconds=5))  # an older beat, answered by the view, written behind
    beats_behind.write_now()
    assert heartbeat_of(run) == later


def test_two_writers_at_once_on_the_same_runs_neither_deadlock_nor_move_back(ws):
    """Two processes' writers, each its own connection, the same 30 runs, beats in opposite orders."""
    runs = [due_run(ws, state=State.RUNNING) for _ in range(30)]
    start = timezone.now()
    beats = [{run.pk: (start + timedelta(seconds=writer * 100 + i), run.token_generation, run.workspace_id)
              for i, run in enumerate(runs if writer == 0 else runs[::-1])} for writer in (0, 1)]
    errors, barrier = [], threading.Barrier(2)

    def write(mine):
        try:
            barrier.wait()
            for _ in range(20):
                assert hot_sql.write_beats(mine) == len(runs)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(mine,)) for mine in beats]
    [thread.start() for thread in threads]
    [thread.join(60) for thread in threads]
    assert errors == []
    for i, run in enumerate(runs):
        assert heartbeat_of(run) == max(beats[0][run.pk][0], beats[1][run.pk][0]), i


def test_the_write_does_not_wait_for_a_transaction_inserting_a_row_that_names_a_run(ws):
    """Such a transaction (a task run's, a state change's) holds FOR KEY SHARE on the run until it
    commits; the beat's own UPDATE does not wait for it, nor may the writer."""
    run = due_run(ws, state=State.RUNNING)
    inserting = connection.get_new_connection(connection.get_connection_params())
    written, writer = [], None
    try:
        inserting.execute(f"SELECT 1 FROM {FlowRun._meta.db_table} WHERE id = %s FOR KEY SHARE", [run.pk])

        def write():
            try:
                written.append(hot_sql.write_beats({run.pk: (timezone.now(), run.token_generation,
                                                             run.workspace_id)}))
            finally:
                connections.close_all()

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(5)
        assert written == [1]
    finally:
        inserting.rollback()
        inserting.close()
        if writer is not None:
            writer.join()


def test_the_view_holds_at_most_its_capacity(ws, behind, monkeypatch):
    monkeypatch.setattr(module, "CAPACITY", 2)
    runs = [due_run(ws, state=State.RUNNING) for _ in range(3)]
    viewed(runs[0]), viewed(runs[1])
    for _ in range(3):
        record(runs[2])
    assert beats_behind.viewed() == 2 and runs[2].pk not in beats_behind._view
    moment = timezone.now()
    record(runs[2], moment)  # not viewed: written in the request
    assert heartbeat_of(runs[2]) == moment


def test_with_no_run_heard_for_long_the_thread_ends_and_closes_its_connections(ws, monkeypatch):
    run = due_run(ws, state=State.RUNNING)
    settings_ = {**settings.ORCHESTRATOR, "HEARTBEAT_WRITE_BEHIND_SECONDS": 0.1}
    monkeypatch.setattr(settings, "ORCHESTRATOR", settings_)
    viewed(run)
    thread = beats_behind._thread
    listening = lambda: FlowRun.objects.raw(  # noqa: E731
        "SELECT 1 AS id FROM pg_stat_activity WHERE query LIKE 'LISTEN %%' AND datname = current_database()")
    assert len(list(listening())) == 1
    monkeypatch.setattr(module, "FORGET_AFTER_SECONDS", 0)
    monkeypatch.setattr(module, "EVICT_EVERY_SECONDS", 0)
    thread.join(10)
    assert not thread.is_alive() and beats_behind.viewed() == 0
    assert list(listening()) == []


def test_a_beat_answered_by_the_view_emits_its_event(ws, behind, flush_events):
    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    before = len([e for e in flush_events() if e.name == "flow-run.heartbeat"])
    with CaptureQueriesContext(connection) as queries:
        record(run)
    assert len(queries) == 0
    beats = [e for e in flush_events() if e.name == "flow-run.heartbeat"]
    assert len(beats) == before + 1
    assert {(e.resource["id"], e.payload["state"]) for e in beats} == {(str(run.pk), "RUNNING")}
    assert [{r["kind"] for r in e.related} for e in beats[before:]] == [{"flow", "work-queue"}]


def test_inside_a_transaction_a_beat_is_the_transaction_s(ws, behind):
    from django.db import transaction

    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    moment = timezone.now()
    with transaction.atomic():
        record(run, moment)
        assert heartbeat_of(run) == moment
    assert beats_behind.pending() == 0


def test_the_thread_writes_on_its_own_every_interval(ws, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "HEARTBEAT_WRITE_BEHIND_SECONDS": 0.1}
    run = due_run(ws, state=State.RUNNING)
    viewed(run)
    moment = timezone.now() + timedelta(seconds=1)
    record(run, moment)
    wait_for(lambda: heartbeat_of(run) == moment, timeout=10, what="the thread to write the beat")


# --- from the outside: gunicorn as production runs it ---------------------------------------------

def _database_url():
    db = connection.settings_dict
    return f"postgres://{db.get('USER') or 'postgres'}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_gunicorn_answers_from_its_view_and_writes_what_it_heard_before_it_stops(ws, prefix, stop):
    """A worker that stops as gunicorn stops it (SIGTERM) writes its pending beats first; one killed
    with SIGKILL loses at most its last interval's, and the run's next beat is written as ever."""
    run = due_run(ws, state=State.RUNNING)
    port = free_port()
    env = {**os.environ, "DEBUG": "false", "SECRET_KEY": settings.SECRET_KEY, "ALLOWED_HOSTS": "127.0.0.1",
           "ORCHESTRATOR_SECURE_SSL_REDIRECT": "false", "DATABASE_URL": _database_url(), "LOG_LEVEL": "WARNING",
           "WHITENOISE_USE_FINDERS": "true",
           "ORCHESTRATOR_HEARTBEAT_WRITE_BEHIND_SECONDS": "10"}  # the thread does not write before the stop
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "orchestrator.wsgi", "-k", "gthread", "-w", "1",
                               "--threads", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}{prefix}/agent/flow_runs/{run.pk}/heartbeat"
    headers = {"Authorization": f"Bearer {token_for(run.pk, ws.pk, run.token_generation)}"}
    try:
        def answered():
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                return requests.post(url, headers=headers, timeout=5).json() == {"state": "RUNNING"}
            except requests.ConnectionError:
                return False

        wait_for(answered, timeout=60, what="gunicorn to answer a beat")

        def written_behind():  # a beat answered by the view: the database still has the one before
            before = heartbeat_of(run)
            assert requests.post(url, headers=headers, timeout=5).json() == {"state": "RUNNING"}
            return heartbeat_of(run) == before

        wait_for(written_behind, timeout=30, what="a beat answered from the view")
        first = heartbeat_of(run)
        os.killpg(server.pid, getattr(signal, stop))
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stderr.close()
    if stop == "SIGTERM":
        assert heartbeat_of(run) > first
    else:
        assert heartbeat_of(run) == first
    assert FlowRun.objects.filter(pk=run.pk, state=State.RUNNING).exists()
    connections.close_all()

