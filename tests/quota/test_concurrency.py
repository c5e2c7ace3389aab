"""Counting under concurrency on PostgreSQL: completions racing over the API, each with its own
connection, count each task run exactly once."""

import threading

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from runs import quota
from runs.models import State, StateChange, TaskRun
from runs.run_tokens import token_of
from tests import factories

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_at_once(jobs):
    """Run each of `jobs` in its own thread (and connection), started together; returns their results."""
    start = threading.Barrier(len(jobs))
    results = [None] * len(jobs)

    def work(index, job):
        start.wait()
        try:
            results[index] = job()
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def reporter_of(run):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_of(run)}")
    return client


def test_eight_completions_of_one_task_run_at_once_count_it_once(postgres_only):
    ws = factories.workspace()
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    task_run = factories.task_run(run)
    url = f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}/agent/task_runs/{task_run.pk}/state"
    statuses = run_at_once([lambda: reporter_of(run).post(url, {"state": "COMPLETED"}, format="json").status_code
                            for _ in range(8)])
    assert sorted(statuses) == [200] + [409] * 7
    assert quota.used(ws.pk, timezone.now()) == 1
    # One move, so one history row: the waiting reports re-checked the state the first one left.
    assert StateChange.objects.filter(task_run=task_run, to_state=State.COMPLETED).count() == 1


def test_completions_of_many_task_runs_from_many_clients_sum_exactly(postgres_only):
    ws = factories.workspace()
    run = factories.flow_run(factories.flow(ws), State.RUNNING)
    task_runs = [factories.task_run(run) for _ in range(120)]
    prefix = f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}/agent"
    clients = 6

    def complete_share(share):
        client = reporter_of(run)
        # Each task run is completed twice, by two clients (a retried report): one of them moves it.
        mine = task_runs[share::clients] + task_runs[(share + 1) % clients::clients]
        return [client.post(f"{prefix}/task_runs/{t.pk}/state", {"state": "COMPLETED"}, format="json").status_code
                for t in mine]

    statuses = [code for codes in run_at_once([lambda s=s: complete_share(s) for s in range(clients)])
                for code in codes]
    assert statuses.count(200) == 120 and statuses.count(409) == 120
    assert TaskRun.objects.filter(state=State.COMPLETED, quota_counted=True).count() == 120
    assert quota.used(ws.pk, timezone.now()) == 120
