"""A realistic few hours of one workspace, for the browser tests and their screenshots."""

from datetime import timedelta

from runs.models import Actor, FlowRun, Log, LogLevel, State, StateChange, TaskRun
from runs.scheduling import schedule_future_runs
from tests import factories

# (flow, minutes ago it started, minutes it ran or None while running, final state)
RUNS = [
    ("nightly-etl", 330, 40, State.COMPLETED), ("nightly-etl", 270, 42, State.COMPLETED),
    ("nightly-etl", 210, 55, State.FAILED), ("nightly-etl", 150, 38, State.COMPLETED),
    ("nightly-etl", 90, 41, State.COMPLETED), ("nightly-etl", 25, None, State.RUNNING),
    ("billing-sync", 300, 20, State.COMPLETED), ("billing-sync", 240, 95, State.CRASHED),
    ("billing-sync", 120, 22, State.COMPLETED), ("billing-sync", 14, None, State.RUNNING),
    ("ml-training", 200, 150, State.COMPLETED), ("ml-training", 45, None, State.RUNNING),
    ("report-mailer", 60, 3, State.CANCELLED),
]


def seed_window(ws, now):
    """Flows with schedules, 13 started runs and 2 late ones, history, task runs, logs, agents.

    Returns {"runs": [the 15 runs in the window], "schedule": an ACTIVE schedule}.
    """
    queue = factories.work_queue(ws, name="default", concurrency_limit=5, last_polled=now - timedelta(seconds=4))
    gpu = factories.work_queue(ws, name="gpu", concurrency_limit=2, last_polled=now - timedelta(minutes=9))
    flows = {name: factories.flow(ws, name=name) for name in dict.fromkeys(r[0] for r in RUNS)}
    agent = factories.agent(ws, name="agent-eu-1", last_heartbeat=now - timedelta(seconds=12), version="0.1.0")
    agent.queues.add(queue)
    factories.agent(ws, name="agent-gpu-1", last_heartbeat=now - timedelta(hours=2), status="OFFLINE").queues.add(gpu)
    schedule = factories.schedule(flows["nightly-etl"], slug="hourly", interval_seconds=3600,
                                  description="Loads yesterday's orders.")
    factories.schedule(flows["billing-sync"], slug="business-hours", kind="cron", interval_seconds=None,
                       cron="*/30 9-17 * * 1-5", timezone="Europe/London")
    schedule_future_runs(list(type(schedule).objects.filter(flow__workspace=ws).select_related("flow")), now)
    runs = []
    beats = {"nightly-etl": 8, "billing-sync": 420, "ml-training": 900}
    for i, (flow_name, ago, took, state) in enumerate(RUNS):
        start = now - timedelta(minutes=ago)
        run = factories.flow_run(
            flows[flow_name], state, name=f"{flow_name}-{i:02d}", scheduled_start=start, start_time=start,
            end_time=start + timedelta(minutes=took) if took else None, agent=agent,
            work_queue=gpu if flow_name == "ml-training" else queue,
            last_heartbeat=now - timedelta(seconds=beats[flow_name]) if took is None else None,
        )
        history(run, start, took, state)
        runs.append(run)
    for i, minutes in enumerate((7, 3)):
        late = factories.flow_run(flows["report-mailer"], State.LATE, name=f"report-mailer-late-{i}",
                                  scheduled_start=now - timedelta(minutes=minutes), work_queue=queue)
        StateChange.objects.create(flow_run=late, from_state=State.SCHEDULED, to_state=State.LATE,
                                   actor=Actor.LATE_RUNS, timestamp=late.scheduled_start + timedelta(seconds=15))
        runs.append(late)
    crashed = next(r for r in runs if r.state == State.CRASHED)
    Log.objects.create(workspace=ws, flow_run=crashed, source="zombie-killer", level=LogLevel.WARNING,
                       message="No heartbeat for 10 min: marked CRASHED", timestamp=crashed.end_time)
    running = next(r for r in runs if r.state == State.RUNNING)
    Log.objects.create(workspace=ws, flow_run=running, source="lazarus", level=LogLevel.WARNING,
                       message="No task run alive after 5 min: rescheduled (attempt 1 of 10)",
                       timestamp=running.start_time - timedelta(minutes=1))
    return {"runs": runs, "schedule": schedule}


def history(run, start, took, state):
    """The run's state changes, three task runs and a few log lines."""
    StateChange.objects.bulk_create([
        StateChange(flow_run=run, from_state="", to_state=State.SCHEDULED, actor=Actor.SCHEDULER,
                    timestamp=start - timedelta(minutes=2), message="Created by schedule"),
        StateChange(flow_run=run, from_state=State.SCHEDULED, to_state=State.RUNNING, actor=Actor.AGENT,
                    agent=run.agent, timestamp=start, message=f"Claimed by {run.agent}"),
    ])
    if took:
        actor = Actor.ZOMBIE_KILLER if state == State.CRASHED else Actor.AGENT
        StateChange.objects.create(flow_run=run, from_state=State.RUNNING, to_state=state, actor=actor,
                                   timestamp=run.end_time, message="No heartbeat within the threshold"
                                   if state == State.CRASHED else "")
    span = took or 20
    for j, key in enumerate(("extract", "transform", "load")):
        t_start = start + timedelta(minutes=span * j / 3)
        done = took is not None or j < 2
        TaskRun.objects.create(flow_run=run, task_key=key, state=State.COMPLETED if done else State.RUNNING,
                               start_time=t_start, end_time=t_start + timedelta(minutes=span / 3) if done else None)
        Log.objects.create(workspace=run.workspace, flow_run=run, message=f"{key} started", timestamp=t_start)
    if state == State.FAILED:
        Log.objects.create(workspace=run.workspace, flow_run=run, level=LogLevel.ERROR,
                           message="ConnectionError: warehouse refused the connection", timestamp=run.end_time)
    return FlowRun.objects.get(pk=run.pk)
