"""The monthly quota's cost on the hot paths, each beside the same path without it, in the same run:

- a task run's COMPLETED report over the agent API (counted: one upsert more) beside its FAILED report
  (not counted), one client, and on PostgreSQL 16 clients in one workspace (the counter rows'
  contention, spread over USAGE_SHARDS rows);
- an agent's poll with nothing due, in a workspace with a quota (one read of the month's counters)
  beside one without.

BENCH_QUOTA_TASK_RUNS sets the task runs per figure (default 800; the issue's hosted plan, 5000,
is `BENCH_QUOTA_TASK_RUNS=5000`); BENCH_QUOTA_POLLS the polls per figure (default 300).
"""

import os
import statistics
import threading
import time
import uuid

from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from runs import quota
from runs.models import Account, Agent, ApiKey, Flow, FlowRun, Role, State, TaskRun, WorkQueue, Workspace
from runs.run_tokens import token_of

TASK_RUNS = int(os.environ.get("BENCH_QUOTA_TASK_RUNS", "800"))
POLLS = int(os.environ.get("BENCH_QUOTA_POLLS", "300"))
CLIENTS = 16


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def task_runs_of(run, count, label):
    rows = [TaskRun(flow_run=run, task_key=f"{label}-{i}", state=State.RUNNING) for i in range(count)]
    TaskRun.objects.bulk_create(rows, batch_size=5000)
    return [str(pk) for pk in TaskRun.objects.filter(flow_run=run, task_key__startswith=f"{label}-")
            .values_list("pk", flat=True)]


def alternating_reports(prefix, run, pairs, clients):
    """From `clients` threads, each alternating: FAILED for the first task run of a pair, COMPLETED for
    the second. Returns ({state: [ms, …]}, reports/s): both states meet the same load."""
    timings, lock = {"FAILED": [], "COMPLETED": []}, threading.Lock()
    barrier = threading.Barrier(clients)

    def work(share):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_of(run)}")
        barrier.wait()
        mine = {"FAILED": [], "COMPLETED": []}
        for failing_id, completing_id in pairs[share::clients]:
            for task_run_id, state in ((failing_id, "FAILED"), (completing_id, "COMPLETED")):
                started = time.perf_counter()
                answer = client.post(f"{prefix}/task_runs/{task_run_id}/state", {"state": state}, format="json")
                mine[state].append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, answer.content[:300]
        with lock:
            for state, values in mine.items():
                timings[state].extend(values)
        if clients > 1:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return timings, 2 * len(pairs) / (time.perf_counter() - started)


def run(table):
    account = Account.objects.create(name="Bench quota", slug=f"bench-quota-{uuid.uuid4().hex[:6]}")
    ws = Workspace.objects.create(account=account, name="Bench quota", slug="bench", monthly_task_run_quota=None)
    flow = Flow.objects.create(workspace=ws, name="tasks")
    flow.register_version(entrypoint="bench:noop")
    flow_run = FlowRun.objects.create(workspace=ws, flow=flow, flow_version=flow.latest_version, state=State.RUNNING,
                                      scheduled_start=timezone.now(), start_time=timezone.now())
    prefix = f"/api/accounts/{account.slug}/workspaces/{ws.slug}/agent"
    half = max(TASK_RUNS // 2, 20)

    # The price of counting on one report: FAILED and COMPLETED alternating report by report, so that a
    # busy machine slows both alike; one client, then (PostgreSQL) 16 in one workspace, where completions
    # at once meet on the workspace's counter rows.
    for clients in (1, CLIENTS):
        if clients > 1 and connection.vendor != "postgresql":
            print(f"  {CLIENTS} concurrent reporters: PostgreSQL only (set DATABASE_URL)", flush=True)
            continue
        pairs = list(zip(task_runs_of(flow_run, half, f"f{clients}"), task_runs_of(flow_run, half, f"c{clients}")))
        timings, rate = alternating_reports(prefix, flow_run, pairs, clients)
        f50, c50 = statistics.median(timings["FAILED"]), statistics.median(timings["COMPLETED"])
        f99, c99 = percentile(timings["FAILED"], 0.99), percentile(timings["COMPLETED"], 0.99)
        table.add(f"task run COMPLETED over the agent API, counted, {clients} client(s): p50 / p99",
                  f"{c50:.2f} / {c99:.1f} ms ({rate:.0f} reports/s in all)",
                  f"FAILED (not counted) {f50:.2f} / {f99:.1f} ms", f"{c50 / f50:.2f}× at p50")
    assert quota.used(ws.pk, timezone.now()) == TaskRun.objects.filter(flow_run=flow_run, state=State.COMPLETED).count()

    # An agent's poll, nothing due: a workspace with a quota (not reached) beside one without, alternating.
    pollers = {}
    for label, limit in (("off", None), ("on", 10 * TASK_RUNS)):
        workspace = ws if label == "off" else Workspace.objects.create(
            account=account, name="Bench quota on", slug="bench-on", monthly_task_run_quota=limit)
        queue = WorkQueue.objects.create(workspace=workspace, name="default")
        agent = Agent.objects.create(workspace=workspace, name=f"bench-quota-{label}")
        agent.queues.set([queue])
        _, secret = ApiKey.issue(workspace=workspace, name="bench-agent", role=Role.AGENT)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        url = f"/api/accounts/{account.slug}/workspaces/{workspace.slug}/agent/claim"
        pollers[label] = (client, url, agent.pk)
    timings = {"off": [], "on": []}
    for round_no in range(POLLS + 10):
        for label, (client, url, agent_id) in pollers.items():
            started = time.perf_counter()
            answer = client.post(url, {"agent_id": agent_id, "max_runs": 10}, format="json")
            if round_no >= 10:  # the first ones warm caches and record the queues' polls
                timings[label].append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200 and answer.json()["quota"] is None, answer.content[:300]
    on = statistics.median(timings["on"]), percentile(timings["on"], 0.99)
    off = statistics.median(timings["off"]), percentile(timings["off"], 0.99)
    table.add("agent poll, nothing due, with a quota (p50 / p99)", f"{on[0]:.2f} / {on[1]:.2f} ms",
              f"no quota {off[0]:.2f} / {off[1]:.2f} ms", f"{on[0] / off[0]:.2f}×", aim="p99 < 10 ms")
