"""kill -9 of a Celery worker in the middle of a service pass.

The pass is caught mid-way for certain: the test holds a lock on the flow-run table, so the
worker's Lazarus pass waits inside its transaction (holding Towel's advisory lock) until the test
kills it. What must hold afterwards: the half-done pass left nothing behind, its lock did not
outlive it, the next worker's pass does the whole job exactly once, and no pass is recorded failed.
"""

from datetime import timedelta

import psycopg
import pytest
from django.utils import timezone

from orchestrator.celery import app
from runs.models import Actor, FlowRun, State, StateChange
from services.models import ServicePass
from tests import factories
from tests.faults.conftest import database_url, service_env, wait_for, worker_command

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def start_worker(processes, postgres, redis_url, tmp_path, name):
    return processes(name, worker_command(name),
                     service_env(postgres, redis_url, tmp_path / f"var-{name}"))


def send_pass(redis_url, service):
    with app.connection_for_write(redis_url) as conn:
        app.send_task("services.run_service", args=[service], connection=conn)


def waiting_on_a_lock(postgres):
    """Backends of the test database (other than ours) waiting for a lock: the worker's pass, stuck."""
    with psycopg.connect(database_url(postgres), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                            [postgres["NAME"]]).fetchone()[0]


def test_a_worker_killed_mid_pass_leaves_nothing_half_done(private_redis, processes, postgres, tmp_path):
    ws = factories.workspace()
    flow = factories.flow(ws)
    long_ago = timezone.now() - timedelta(hours=1)
    agent = factories.agent(ws, last_heartbeat=long_ago)
    # Silent for an hour: past Lazarus's default grace (600 s), which the workers use.
    stuck = [factories.flow_run(flow, State.RUNNING, start_time=long_ago, last_heartbeat=long_ago,
                                state_changed=long_ago, heartbeat_interval=30, agent=agent) for _ in range(3)]
    started = timezone.now()

    first = start_worker(processes, postgres, private_redis.url, tmp_path, "doomed")
    with psycopg.connect(database_url(postgres)) as blocker:
        blocker.execute(f"LOCK TABLE {FlowRun._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        send_pass(private_redis.url, "lazarus")
        wait_for(lambda: waiting_on_a_lock(postgres), timeout=60,
                 what=lambda: f"the worker's pass to wait on the lock\n{first.output()}")
        first.kill()  # SIGKILL, whole process group, mid-pass
        blocker.rollback()

    assert not StateChange.objects.filter(flow_run__in=stuck).exists(), "the killed pass left changes behind"

    second = start_worker(processes, postgres, private_redis.url, tmp_path, "heir")

    def passed():
        # Until the server notices the dead worker's connection, its lock may make a pass skip: ask again.
        if not ServicePass.objects.filter(service="lazarus", ok=True, started__gte=started).exists():
            send_pass(private_redis.url, "lazarus")
            return False
        return True

    wait_for(passed, timeout=60, interval=1, what=lambda: f"a Lazarus pass to succeed\n{second.output()}")

    for run in stuck:
        run.refresh_from_db()
        assert (run.state, run.lazarus_count) == (State.SCHEDULED, 1)
        assert list(run.history.values_list("to_state", "actor")) == [(State.SCHEDULED, Actor.LAZARUS)]
    assert not ServicePass.objects.filter(ok=False).exists(), list(ServicePass.objects.values_list("service", "error"))
