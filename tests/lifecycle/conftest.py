"""Builders for the data-lifecycle tests: finished runs with what hangs under them."""

from datetime import datetime, timedelta, timezone

import pytest

from runs.models import Actor, FlowRun, Log, State, StateChange, TaskRun
from tests import factories

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def finished_runs(flow, count, *, ended, state=State.COMPLETED, tasks=2, logs=2, **fields):
    """`count` runs of `flow` that ended at `ended`, each with `tasks` task runs, a history row per run
    and per task run, and `logs` log lines per task run (written when the run ended)."""
    runs = FlowRun.objects.bulk_create([
        FlowRun(workspace_id=flow.workspace_id, flow=flow, state=state, name=f"r{factories.n()}",
                scheduled_start=ended - timedelta(minutes=5), start_time=ended - timedelta(minutes=5),
                end_time=ended, state_changed=ended, **fields)
        for _ in range(count)])
    task_runs = TaskRun.objects.bulk_create([
        TaskRun(flow_run=run, task_key=f"t{i}", state=state, end_time=ended) for run in runs for i in range(tasks)])
    StateChange.objects.bulk_create(
        [StateChange(flow_run=run, to_state=state, actor=Actor.AGENT, timestamp=ended) for run in runs]
        + [StateChange(flow_run_id=t.flow_run_id, task_run=t, to_state=state, actor=Actor.AGENT, timestamp=ended)
           for t in task_runs])
    Log.objects.bulk_create([
        Log(workspace_id=flow.workspace_id, flow_run_id=t.flow_run_id, task_run=t, message=f"line {i}",
            timestamp=ended) for t in task_runs for i in range(logs)])
    return runs


def rows_of(run_ids):
    """How many rows hang from `run_ids`: runs, task runs, history, logs."""
    return {"runs": FlowRun.objects.filter(pk__in=run_ids).count(),
            "task_runs": TaskRun.objects.filter(flow_run_id__in=run_ids).count(),
            "history": StateChange.objects.filter(flow_run_id__in=run_ids).count(),
            "logs": Log.objects.filter(flow_run_id__in=run_ids).count()}


@pytest.fixture
def flow(ws):
    return factories.flow(ws)
