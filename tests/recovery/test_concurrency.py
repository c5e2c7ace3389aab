"""Two copies of each service at once end in the same state as one (PostgreSQL: row locks, SKIP LOCKED)."""

import threading
import time
from collections import Counter

import pytest
from django.db import connections

from runs.models import AgentStatus, FlowRun, Log, State, StateChange, TaskRun
from services import registry, towel
from tests import factories

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
N = 40


def side_by_side(target, copies=2):
    """Run `target()` in `copies` threads released at the same moment; returns their results."""
    barrier = threading.Barrier(copies)
    results, errors = [], []

    def work():
        try:
            barrier.wait()
            results.append(target())
        except Exception as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.fixture
def messy_world(ws, ago):
    """N runs for every service to act on, and a healthy run beside them."""
    flow = factories.flow(ws)
    dead = factories.agent(ws, last_heartbeat=ago(7200))
    for _ in range(N):
        zombie = factories.flow_run(flow, State.RUNNING, start_time=ago(7200), last_heartbeat=ago(7200),
                                    heartbeat_interval=30, agent=dead, state_changed=ago(7200))
        factories.task_run(zombie, State.RUNNING, last_heartbeat=ago(7200), start_time=ago(7200))
        factories.flow_run(flow, State.SUBMITTED, agent=dead, state_changed=ago(7200))
        factories.flow_run(flow, scheduled_start=ago(60))
        factories.flow_run(flow, State.PAUSED, pause_expires_at=ago(1))
        stuck = factories.flow_run(flow, State.RUNNING, start_time=ago(7200), last_heartbeat=ago(1200),
                                   heartbeat_interval=30, state_changed=ago(7200))
        factories.task_run(stuck, State.COMPLETED, state_changed=ago(1200))
        cancelled = factories.flow_run(flow, State.CANCELLED)
        factories.task_run(cancelled, State.RUNNING, last_heartbeat=ago(1))
    healthy = factories.flow_run(flow, State.RUNNING, last_heartbeat=ago(1), heartbeat_interval=30,
                                 agent=factories.agent(ws, last_heartbeat=ago(1)))
    factories.task_run(healthy, State.RUNNING, last_heartbeat=ago(1))
    return healthy


ORDER = ["agent-monitor", "zombie-killer", "lazarus", "mark-late-runs", "fail-expired-pauses", "cancellation-cleanup"]


def snapshot():
    return (sorted(Counter(FlowRun.objects.values_list("state", flat=True)).items()),
            sorted(Counter(TaskRun.objects.values_list("state", flat=True)).items()),
            StateChange.objects.count(), Log.objects.count())


@pytest.mark.parametrize("copies", [1, 2])
def test_copies_of_every_service_end_in_the_same_state(postgres_only, messy_world, now, copies):
    for name in ORDER:
        service = registry.get(name)
        side_by_side(lambda: service.run_once(now), copies)
    # Worked out by hand for `messy_world`, so one copy and two copies must both land here:
    # zombies → task FAILED + flow CRASHED; the dead agent's SUBMITTED runs → SCHEDULED (due at
    # creation, within the late grace); Lazarus's runs → SCHEDULED; overdue → LATE; expired
    # pauses → FAILED; the cancelled runs' tasks → CANCELLED; the healthy run stays RUNNING.
    flows = Counter({State.CRASHED: N, State.SCHEDULED: 2 * N, State.LATE: N, State.FAILED: N,
                     State.CANCELLED: N, State.RUNNING: 1})
    tasks = Counter({State.FAILED: N, State.CANCELLED: N, State.COMPLETED: N, State.RUNNING: 1})
    assert snapshot() == (sorted(flows.items()), sorted(tasks.items()), 7 * N, 3 * N)
    # No run was moved twice by the same service.
    per_row = StateChange.objects.values_list("flow_run_id", "task_run_id", "actor")
    assert max(Counter(per_row).values()) == 1
    assert factories.Agent.objects.filter(status=AgentStatus.OFFLINE).count() == 1


def test_overlapping_towel_passes_skip_instead_of_piling_up(postgres_only, monkeypatch, now):
    started = []

    def slow(now):
        started.append(now)
        time.sleep(0.5)  # holds the lock while the other copy tries
        return {"touched": 1}

    service = registry.get("lazarus")
    monkeypatch.setitem(registry._SERVICES, "lazarus",
                        registry.Service(service.name, slow, service.interval_seconds, service.description))
    results = side_by_side(lambda: towel.run("lazarus", now))
    assert sorted(map(str, results)) == ["{'skipped': 'another pass is running'}", "{'touched': 1}"]
    assert len(started) == 1
