"""Log ingestion on its own path: accepted lines reach the table at least once and are kept once,
through Redis restarts and persister crashes; the request writes nothing to the database with Redis.

Uses the events' private redis-server (tests/events/conftest.py: its own port and AOF directory).
"""

import threading
import time
from collections import Counter

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext

from events import buffer
from runs.logs import ingest
from runs.models import Log, State
from services import log_persister
from tests import factories
from tests.events.conftest import Worker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def logs_in_redis(settings, private_redis):
    settings.REDIS_URL = private_redis.url
    buffer.reset()
    ingest.reset()
    yield private_redis
    buffer.reset()
    ingest.reset()


@pytest.fixture
def embedded(settings):
    settings.REDIS_URL = ""
    buffer.reset()
    yield
    buffer.reset()


@pytest.fixture
def run(ws):
    return factories.flow_run(factories.flow(ws), state=State.RUNNING)


def batch(run, tag, count, **extra):
    return {"logs": [{"flow_run_id": str(run.pk), "message": f"{tag} {i}", **extra} for i in range(count)]}


def post(reporter, prefix, run, tag, count=10, **extra):
    answer = reporter.post(f"{prefix}/agent/logs", batch(run, tag, count, **extra), format="json")
    assert answer.status_code == 201, answer.content
    return answer


def stored_messages():
    return Counter(Log.objects.values_list("message", flat=True))


def drain(limit=50):
    for _ in range(limit):
        try:
            log_persister.run_once()
        except redis.RedisError:
            time.sleep(0.1)
            continue
        if ingest.stream_length() == 0:
            return
    raise AssertionError(f"the log stream did not drain: {ingest.stream_length()} entries left")


def test_embedded_mode_stores_lines_in_the_request(embedded, reporter, prefix, run):
    post(reporter, prefix, run, "now", 5)
    assert stored_messages() == Counter(f"now {i}" for i in range(5))
    assert log_persister.run_once() == {"stored": 0, "skipped": 0}


def test_with_redis_the_request_writes_no_log_row_and_the_persister_stores_them(logs_in_redis, reporter, prefix, run):
    with CaptureQueriesContext(connection) as captured:
        post(reporter, prefix, run, "later", 20)
    writes = [q["sql"] for q in captured.captured_queries if q["sql"].split()[0] in ("INSERT", "COPY", "UPDATE")]
    assert writes == [], writes
    assert Log.objects.count() == 0 and ingest.stream_length() == 1
    assert log_persister.run_once() == {"stored": 20, "skipped": 0}
    assert stored_messages() == Counter(f"later {i}" for i in range(20))
    assert ingest.stream_length() == 0
    assert log_persister.run_once() == {"stored": 0, "skipped": 0}


def test_lines_are_listed_by_timestamp_whatever_order_their_batches_were_stored_in(logs_in_redis, reporter, prefix,
                                                                                  run, api, key_for):
    from runs.models import Role

    post(reporter, prefix, run, "late", 1, timestamp="2026-12-01T10:00:05Z")
    post(reporter, prefix, run, "early", 1, timestamp="2026-12-01T10:00:01Z")
    drain()
    viewer = api.as_key(key_for(Role.VIEWER))
    rows = viewer.get(f"{prefix}/logs/", {"flow_run": str(run.pk)}).json()["results"]
    assert [row["message"] for row in rows] == ["early 0", "late 0"]


def test_a_crash_between_store_and_ack_redelivers_and_stores_nothing_twice(logs_in_redis, reporter, prefix, run,
                                                                          monkeypatch):
    post(reporter, prefix, run, "once", 30)
    real_ack = ingest.STREAM.ack

    def crash(client, ids):
        raise SystemExit("killed after the transaction committed, before the acknowledgement")

    monkeypatch.setattr(ingest.STREAM, "ack", crash)
    with pytest.raises(SystemExit):
        log_persister.run_once()
    assert Log.objects.count() == 30  # stored and committed…
    client = buffer.redis_client()
    assert client.xpending(ingest.STREAM.key, ingest.STREAM.group)["pending"] == 1  # …not acknowledged
    monkeypatch.setattr(ingest.STREAM, "ack", real_ack)
    assert log_persister.run_once() == {"stored": 0, "skipped": 30}
    assert max(stored_messages().values()) == 1 and len(stored_messages()) == 30
    assert ingest.stream_length() == 0


def test_a_crash_before_the_commit_keeps_the_lines_for_the_next_pass(logs_in_redis, reporter, prefix, run,
                                                                     monkeypatch):
    post(reporter, prefix, run, "kept", 12)
    real_store = ingest.store

    def crash(rows, **kwargs):
        real_store(rows, **kwargs)
        raise SystemExit("killed inside the transaction")

    monkeypatch.setattr(ingest, "store", crash)
    with pytest.raises(SystemExit):
        log_persister.run_once()
    assert Log.objects.count() == 0  # rolled back
    monkeypatch.setattr(ingest, "store", real_store)
    assert log_persister.run_once() == {"stored": 12, "skipped": 0}


def test_redis_restarting_mid_flood_loses_no_accepted_line_and_duplicates_none(logs_in_redis, ws, prefix, run):
    """One thread posts batches (as an agent does) while another runs persister passes; Redis is stopped
    (SIGTERM) and started again on the same port and directory half-way. Every line the API answered
    201 for is stored exactly once: from the stream, or written in the request while Redis was away."""
    from tests.conftest import RunReporter

    total = 120
    accepted, done, failures, third = [], threading.Event(), [], threading.Event()

    def poster():
        reporter = RunReporter(ws.pk)
        try:
            for i in range(total):
                answer = reporter.post(f"{prefix}/agent/logs", batch(run, f"b{i}", 5), format="json")
                if answer.status_code == 201:
                    accepted.extend(f"b{i} {n}" for n in range(5))
                if i == total // 3:
                    third.set()
                time.sleep(0.01)
        finally:
            done.set()

    def passes():
        while not done.is_set():
            try:
                log_persister.run_once()
            except Exception as exc:  # noqa: BLE001 - Redis is away for a moment: the next pass retries
                failures.append(type(exc).__name__)
            time.sleep(0.2)  # behind the poster on purpose: unread entries wait when Redis stops

    workers = [Worker(poster), Worker(passes)]
    for worker in workers:
        worker.start()
    assert third.wait(60)
    before = ingest.stream_length()
    logs_in_redis.restart_once_met(failures, at_least=0.5)
    for worker in workers:
        worker.join(120)
        assert not worker.is_alive() and worker.error is None, worker.error
    buffer.reset()  # the breaker may still skip Redis for a few seconds
    drain()

    assert before > 0, "nothing was waiting in the stream when Redis stopped: the test proved nothing"
    assert failures, "no persister pass met the outage"
    assert len(accepted) == total * 5, "a batch was refused: the API must take logs while Redis is away"
    counts = stored_messages()
    assert set(counts) == set(accepted), f"lost {len(set(accepted) - set(counts))} lines"
    assert max(counts.values()) == 1


def test_with_redis_down_the_request_stores_the_lines_itself(logs_in_redis, reporter, prefix, run):
    logs_in_redis.stop()
    started = time.monotonic()
    post(reporter, prefix, run, "direct", 4)
    post(reporter, prefix, run, "breaker", 4)  # Redis skipped: no second timeout
    assert time.monotonic() - started < 3
    assert stored_messages() == Counter([f"direct {i}" for i in range(4)] + [f"breaker {i}" for i in range(4)])


def test_a_full_stream_is_never_trimmed_the_request_stores_instead(logs_in_redis, reporter, prefix, run, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "LOG_STREAM_MAX_LENGTH": 2}
    for i in range(3):
        post(reporter, prefix, run, f"queued{i}", 2)
    assert ingest.stream_length() == 3 and Log.objects.count() == 0  # the third made it full
    post(reporter, prefix, run, "overflow", 2)
    assert ingest.stream_length() == 3 and Log.objects.count() == 2  # written in the request
    drain()
    assert len(stored_messages()) == 8 and max(stored_messages().values()) == 1


def test_two_persisters_at_once_store_each_line_once(logs_in_redis, reporter, prefix, run, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "LOG_PERSISTER_BATCH_SIZE": 2}
    for i in range(20):
        post(reporter, prefix, run, f"p{i}", 25)
    barrier = threading.Barrier(2)

    def one_pass():
        barrier.wait()
        log_persister.run_once()

    workers = [Worker(one_pass), Worker(one_pass)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.error is None, worker.error
    drain()
    counts = stored_messages()
    assert len(counts) == 500 and max(counts.values()) == 1


def test_lines_of_a_run_deleted_before_the_persister_are_dropped_not_stuck(logs_in_redis, reporter, prefix, run):
    post(reporter, prefix, run, "orphan", 3)
    run.delete()
    assert log_persister.run_once() == {"stored": 0, "skipped": 3}
    assert ingest.stream_length() == 0


def test_a_poison_entry_is_dropped_alone(logs_in_redis, reporter, prefix, run):
    client = buffer.redis_client()
    client.xadd(ingest.STREAM.key, {"e": b"not json"})
    client.xadd(ingest.STREAM.key, {"e": b'[["not-a-uuid", 1]]'})
    post(reporter, prefix, run, "fine", 2)
    assert log_persister.run_once()["stored"] == 2
    assert ingest.stream_length() == 0


def test_metrics_show_the_log_batches_waiting(logs_in_redis, reporter, prefix, run, client):
    from tests.platform.test_metrics import scrape

    post(reporter, prefix, run, "waiting", 3)
    post(reporter, prefix, run, "waiting too", 3)
    assert scrape(client)[("orchestrator_log_batches_buffered", ())] == 2
    drain()
    assert scrape(client)[("orchestrator_log_batches_buffered", ())] == 0


def test_a_batch_of_ingest_ids_is_distinct_time_ordered_uuids():
    import uuid

    first, second = ingest.ingest_ids(3000), ingest.ingest_ids(10)
    assert len(set(first)) == 3000
    assert first == sorted(first) and [str(uuid.UUID(i)) for i in first] == first  # canonical form
    assert all(uuid.UUID(i).version == 7 for i in first + second)
    assert uuid.UUID(second[0]).int >> 80 >= uuid.UUID(first[0]).int >> 80  # milliseconds first
    with pytest.raises(ValueError):
        ingest.ingest_ids(70_000)


def test_batch_rows_are_the_rows_row_makes(ws, run):
    from datetime import datetime, timedelta
    from datetime import timezone as dt_timezone

    now = datetime(2026, 12, 7, 4, 0, tzinfo=dt_timezone.utc)
    task = factories.task_run(run)
    lines = [{"level": 20, "message": "plain"},
             {"level": 40, "message": "a task's", "task_run_id": task.pk, "timestamp": now - timedelta(seconds=3)}]
    rows = ingest.batch_rows(ws.pk, run.pk, lines, now)
    assert rows == [ingest.row(rows[0][0], ws.pk, run.pk, None, 20, "plain", now),
                    ingest.row(rows[1][0], ws.pk, run.pk, task.pk, 40, "a task's", now - timedelta(seconds=3))]


@pytest.mark.postgres
def test_the_recovery_reviews_lines_and_a_task_runs_lines_are_read_by_their_partial_indexes(ws, run):
    """The partial indexes serve the reads they were made for (PostgreSQL proves the condition from
    the query), and the agents' lines are not in them."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's planner")
    task = factories.task_run(run)
    Log.objects.bulk_create([Log(workspace=ws, flow_run=run, message=f"agent {i}") for i in range(2000)]
                            + [Log(workspace=ws, flow_run=run, task_run=task, message="task", source="agent"),
                               Log(workspace=ws, flow_run=run, message="rescheduled", source="lazarus")])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runs_log")
        cursor.execute("SET enable_seqscan = off")
    try:
        recovery = Log.objects.filter(workspace=ws, source__in=("lazarus", "zombie-killer"),
                                      timestamp__gte="2000-01-01T00:00:00Z").explain()
        of_task = Log.objects.filter(task_run=task).explain()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET enable_seqscan")
    assert "log_service_source_time" in recovery, recovery
    assert "log_task_run" in of_task, of_task
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size('log_task_run'), pg_relation_size('log_ws_time_id')")
        partial, full = cursor.fetchone()
    assert partial < full / 4, (partial, full)


@pytest.mark.postgres
def test_fresh_lines_are_copied_straight_and_a_line_stored_already_takes_the_careful_path(ws, run):
    if connection.vendor != "postgresql":
        pytest.skip("the COPY paths are PostgreSQL's")
    from django.db import transaction
    from django.utils import timezone

    rows = ingest.batch_rows(ws.pk, run.pk, [{"level": 20, "message": f"line {i}"} for i in range(5)], timezone.now())
    with CaptureQueriesContext(connection) as straight, transaction.atomic():
        assert ingest.store(rows[:3], fresh=True) == 3
    assert not any("log_ingest" in q["sql"] for q in straight.captured_queries), straight.captured_queries
    # Entries new to the stream whose lines are stored already (a group made again from 0): the
    # unique ingest id refuses the straight copy, and the careful path keeps the two new lines.
    with CaptureQueriesContext(connection) as careful, transaction.atomic():
        assert ingest.store(rows, fresh=True) == 2
    assert any("log_ingest" in q["sql"] for q in careful.captured_queries)
    assert sorted(Log.objects.values_list("message", flat=True)) == [f"line {i}" for i in range(5)]
    # A run deleted meanwhile: the foreign key refuses the copy inside the savepoint, not at commit.
    gone = factories.flow_run(factories.flow(ws), state=State.RUNNING)
    late = ingest.batch_rows(ws.pk, gone.pk, [{"level": 20, "message": "too late"}], timezone.now())
    gone.delete()
    with transaction.atomic():
        assert ingest.store(late, fresh=True) == 0
    assert not Log.objects.filter(message="too late").exists()
