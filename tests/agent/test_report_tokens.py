"""Reports about a run need the run's report token from its claim, and a superseded attempt is refused.

Only the claimant of a run may report for it (issue 12: any operator key could mark any run
COMPLETED), and an attempt that was superseded (a frozen node whose run Lazarus rescheduled, then
claimed elsewhere) must hear `superseded` and stop, not run its tasks beside the new attempt.
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from runs.models import Actor, Log, Role, State, TaskRun
from runs.run_tokens import read_token, token_for, token_of
from runs.states import set_flow_run_state, transition_flow_runs
from services import log_persister
from tests import factories
from tests.conftest import api_prefix

from .test_api import due_run, operator, registered  # noqa: F401 - fixtures


def holding(token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def claim(operator, prefix, registered):
    answer = operator.post(f"{prefix}/agent/claim", {"agent_id": registered, "max_runs": 10}, format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()["runs"]


def state(client, prefix, run, to_state, **extra):
    return client.post(f"{prefix}/agent/flow_runs/{run.pk}/state", {"state": to_state, **extra}, format="json")


def lazarus_reschedules(run):
    run.refresh_from_db()
    return set_flow_run_state(run, State.SCHEDULED, actor=Actor.LAZARUS, now=timezone.now() - timedelta(seconds=1),
                              updates={"start_time": None, "agent": None, "last_heartbeat": None,
                                       "scheduled_start": timezone.now() - timedelta(seconds=1)})


def test_the_claim_gives_each_run_its_token_and_hands_the_same_one_out_again(operator, prefix, ws, registered):
    run = due_run(ws)
    [claimed] = claim(operator, prefix, registered)
    grant = read_token(claimed["token"])
    assert (grant.run_id, claimed["id"]) == (run.pk, str(run.pk))
    # The answer was lost; the run comes again, with the same token (nothing started with another).
    [again] = claim(operator, prefix, registered)
    assert again["token"] == claimed["token"]
    assert state(holding(claimed["token"]), prefix, run, "RUNNING").status_code == 200


def test_an_api_key_may_not_report_for_a_run_even_an_operators(operator, prefix, ws, key_for):
    """The defect: any operator key could turn a FAILED run COMPLETED through the agents' endpoints.
    (`operator` is the agents' key of these tests: the agent role.)"""
    run = due_run(ws, state=State.RUNNING)
    run = set_flow_run_state(run, State.CRASHED, actor=Actor.ZOMBIE_KILLER, message="No heartbeat.")
    clients = []
    for role in (Role.OPERATOR, Role.ADMIN):
        clients.append(APIClient())
        clients[-1].credentials(HTTP_AUTHORIZATION=f"Bearer {key_for(role)}")
    for client in (operator, *clients):
        answer = state(client, prefix, run, "COMPLETED")
        assert answer.status_code == 403, answer.content
        assert "report token" in answer.json()["error"]["message"]
        for path in (f"flow_runs/{run.pk}/heartbeat", f"flow_runs/{run.pk}/task_runs"):
            assert client.post(f"{prefix}/agent/{path}", {"task_key": "t"}, format="json").status_code == 403
        logs = client.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(run.pk), "message": "x"}]},
                           format="json")
        assert logs.status_code == 403
    run.refresh_from_db()
    log_persister.run_once()  # with Redis, a line that got in would wait in the stream
    assert run.state == State.CRASHED and not Log.objects.exists()


def test_a_token_is_good_in_its_runs_workspace_only(prefix, ws, other_ws):
    """A run's token at another workspace's URL, naming that workspace's run: 404, as for a key."""
    theirs = due_run(other_ws, state=State.RUNNING)
    mine = due_run(ws, state=State.RUNNING)
    answer = state(holding(token_of(mine)), api_prefix(other_ws), theirs, "COMPLETED")
    assert answer.status_code == 404
    forged = token_for(theirs.pk, ws.pk, theirs.token_generation)  # never issued: their run under my workspace
    assert state(holding(forged), api_prefix(other_ws), theirs, "COMPLETED").status_code == 404
    theirs.refresh_from_db()
    assert theirs.state == State.RUNNING


def test_a_token_reports_for_its_own_run_only(prefix, ws):
    mine, theirs = due_run(ws, state=State.RUNNING), due_run(ws, state=State.RUNNING)
    client = holding(token_of(mine))
    assert state(client, prefix, theirs, "COMPLETED").status_code == 403
    task = factories.task_run(theirs)
    assert client.post(f"{prefix}/agent/task_runs/{task.pk}/state", {"state": "COMPLETED"},
                       format="json").status_code == 403
    assert client.post(f"{prefix}/agent/task_runs/{task.pk}/heartbeat").status_code in (403, 404)
    answer = client.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(theirs.pk), "message": "x"},
                                                             {"flow_run_id": str(mine.pk), "message": "mine"}]},
                         format="json")
    assert answer.status_code == 201 and answer.json()["stored"] == 1
    log_persister.run_once()  # with Redis the line waits for the log persister
    assert list(Log.objects.values_list("flow_run_id", flat=True)) == [mine.pk]
    theirs.refresh_from_db()
    assert theirs.state == State.RUNNING


def test_a_run_token_is_good_for_nothing_but_reports(prefix, ws):
    client = holding(token_of(due_run(ws, state=State.RUNNING)))
    assert client.post(f"{prefix}/agent/claim", {"agent_id": 1}, format="json").status_code == 403
    assert client.post(f"{prefix}/agent/register", {"name": "x", "queues": ["q"]}, format="json").status_code == 403
    assert client.get(f"{prefix}/flow_runs/").status_code == 403


@pytest.mark.parametrize("forged", [
    "orr_" + "0" * 32 + "_1_1_" + "a" * 64,  # well formed, not made here
    "orr_nonsense",
])
def test_a_token_this_server_did_not_make_is_401(prefix, ws, forged):
    run = due_run(ws, state=State.RUNNING)
    assert state(holding(forged), prefix, run, "COMPLETED").status_code == 401
    made = token_of(run)
    altered = made[:-1] + ("0" if made[-1] != "0" else "1")
    assert state(holding(altered), prefix, run, "COMPLETED").status_code == 401
    run.refresh_from_db()
    assert run.state == State.RUNNING


def test_after_a_reschedule_every_report_of_the_old_attempt_is_superseded(operator, prefix, ws, registered):
    run = due_run(ws)
    [claimed] = claim(operator, prefix, registered)
    old = holding(claimed["token"])
    assert state(old, prefix, run, "RUNNING", heartbeat_interval=5).status_code == 200
    task_id = old.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "load"}, format="json").json()["id"]
    assert old.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "RUNNING"}, format="json").status_code == 200
    lazarus_reschedules(run)
    [next_attempt] = claim(operator, prefix, registered)
    assert next_attempt["token"] != claimed["token"]
    before = TaskRun.objects.get(pk=task_id).last_heartbeat

    refusals = [
        state(old, prefix, run, "COMPLETED"),
        old.post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat"),
        old.post(f"{prefix}/agent/flow_runs/{run.pk}/task_runs", {"task_key": "next"}, format="json"),
        old.post(f"{prefix}/agent/task_runs/{task_id}/state", {"state": "COMPLETED"}, format="json"),
        old.post(f"{prefix}/agent/task_runs/{task_id}/heartbeat"),
        old.post(f"{prefix}/agent/logs", {"logs": [{"flow_run_id": str(run.pk), "message": "late"}]}, format="json"),
    ]
    assert [r.status_code for r in refusals] == [409] * 6, [r.content for r in refusals]
    assert {r.json()["error"]["code"] for r in refusals} == {"superseded"}
    run.refresh_from_db()
    assert run.state == State.SUBMITTED and run.last_heartbeat is None
    assert TaskRun.objects.get(pk=task_id).last_heartbeat == before
    log_persister.run_once()  # with Redis, a line that got in would wait in the stream
    assert not TaskRun.objects.filter(task_key="next").exists() and not Log.objects.exists()
    # The new attempt reports as usual.
    assert state(holding(next_attempt["token"]), prefix, run, "RUNNING").status_code == 200


def test_a_recovery_verdict_keeps_the_token_so_a_slow_runners_late_completion_is_heard(prefix, ws):
    run = due_run(ws, state=State.RUNNING)
    token = token_of(run)
    transition_flow_runs(type(run).objects.filter(pk=run.pk), State.CRASHED, actor=Actor.ZOMBIE_KILLER,
                         message="No heartbeat for 90 s.")
    answer = state(holding(token), prefix, run, "COMPLETED")
    assert answer.status_code == 200, answer.content
    run.refresh_from_db()
    assert run.state == State.COMPLETED


@pytest.mark.parametrize("new_attempt", ["hand-back", "retry", "agent monitor"])
def test_every_way_back_to_scheduled_supersedes_the_attempt(api, key_for, prefix, ws, new_attempt):
    run = due_run(ws, state=State.RUNNING)
    token = token_of(run)
    if new_attempt == "hand-back":
        assert state(holding(token), prefix, run, "SCHEDULED").status_code == 200
    elif new_attempt == "retry":
        run = set_flow_run_state(run, State.FAILED, actor=Actor.AGENT)
        answer = api.as_key(key_for(Role.OPERATOR)).post(f"{prefix}/flow_runs/{run.pk}/retry/", format="json")
        assert answer.status_code in (200, 201), answer.content
    else:
        transition_flow_runs(type(run).objects.filter(pk=run.pk), State.SCHEDULED, actor=Actor.AGENT_MONITOR,
                             message="Its agent went offline.")
    run.refresh_from_db()
    assert run.state == State.SCHEDULED
    answer = holding(token).post(f"{prefix}/agent/flow_runs/{run.pk}/heartbeat")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "superseded"


def test_a_tokens_mac_is_djangos_salted_hmac_so_tokens_outlive_an_upgrade(settings):
    """Tokens handed out by an earlier release (Django's salted_hmac) stay good after one (the MAC is
    computed from a key derived once), and another SECRET_KEY makes other tokens."""
    import uuid

    from django.utils.crypto import salted_hmac

    run_id = uuid.UUID("0c75defa-d5fe-425d-8fca-cee653dbe1bd")
    for secret in ("first-secret-key", "second-secret-key"):
        settings.SECRET_KEY = secret
        expected = salted_hmac("orchestrator.run-token.v1", f"{run_id.hex}:7:3", secret=secret,
                               algorithm="sha256").hexdigest()
        token = token_for(run_id, 7, 3)
        assert token == f"orr_{run_id.hex}_7_3_{expected}"
        assert read_token(token).run_id == run_id
