"""The test and the live server's request threads change the same runs at once, each in a transaction
of its own: nothing interleaves, nothing is refused, every change is kept.

On SQLite the test database was once Django's in-memory default, whose one connection the live
server hands to all its threads: a run cancelled in the test while the server took its runner's
heartbeats broke that connection ("no such savepoint", "pop from empty list") and every later
test of the worker with it. It is a file now (tests/conftest.py), as on PostgreSQL each thread
has its own connection.
"""

import threading
import urllib.error
import urllib.request

import pytest

from runs.models import FlowRun, Role, State
from runs.run_tokens import token_of
from tests import factories
from tests.conftest import api_prefix

pytestmark = pytest.mark.django_db(transaction=True)


def test_runs_cancelled_while_the_live_server_takes_their_heartbeats_all_end_cancelling(live_server, ws, api):
    flow = factories.flow(ws)
    runs = [factories.flow_run(flow, state=State.RUNNING) for _ in range(30)]
    task_runs = {run.pk: factories.task_run(run) for run in runs}
    agent_api = live_server.url + api_prefix(ws) + "/agent"
    stop, answers, failures = threading.Event(), [], []

    def beat(url, token, body):
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answers.append(answer.status)
        except urllib.error.HTTPError as error:
            (failures if error.code >= 500 else answers).append(error.code)

    def runner_heartbeats(first):
        """Each run's flow-run and task-run beats in turn, as its runner's heartbeat thread sends them."""
        i = first
        while not stop.is_set():
            run = runs[i % len(runs)]
            i += 1
            beat(f"{agent_api}/flow_runs/{run.pk}/heartbeat", token_of(run), b"")
            beat(f"{agent_api}/task_runs/{task_runs[run.pk].pk}/heartbeat", token_of(run), b"{}")

    threads = [threading.Thread(target=runner_heartbeats, args=(n * 7,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        api.as_key(factories.api_key(ws, role=Role.OPERATOR)[1])
        for run in runs:
            answer = api.post(f"{api_prefix(ws)}/flow_runs/{run.pk}/cancel/")
            assert answer.status_code == 200 and answer.json()["state"] == State.CANCELLING, answer.content
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, failures
    assert answers and set(answers) <= {200, 204}, sorted(set(answers))
    assert FlowRun.objects.filter(pk__in=[run.pk for run in runs], state=State.CANCELLING).count() == len(runs)
