"""Background deletion: a flow, a schedule with its runs, or a workspace is gone from every list the
moment it is deleted, and its rows are deleted in batches by a job whose progress the API and the
admin show."""

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs import actions, deletion
from runs.audit import Who
from runs.claiming import claim_due_runs
from runs.models import (
    AuditEntry,
    DeletionJob,
    DeletionState,
    Flow,
    FlowRun,
    FlowVersion,
    Role,
    Schedule,
    State,
    TaskRun,
    Workspace,
)
from services import deletion_jobs, scheduler
from tests import factories

from .conftest import NOW, finished_runs, rows_of

pytestmark = pytest.mark.django_db
WHO = Who("ada", None, "api")


@pytest.fixture
def admin_client(api, ws):
    factories.member(ws, role=Role.ADMIN)
    return api.as_key(factories.api_key(ws, role=Role.ADMIN)[1])


def prefix(ws):
    return f"/api/accounts/{ws.account.slug}/workspaces/{ws.slug}"


def everything_of(flow):
    """Counts of every kind of row a flow has."""
    run_ids = list(FlowRun.objects.filter(flow=flow).values_list("pk", flat=True))
    return {**rows_of(run_ids), "schedules": Schedule.all_objects.filter(flow=flow).count(),
            "versions": FlowVersion.objects.filter(flow=flow).count(),
            "flow": Flow.all_objects.filter(pk=flow.pk).count()}


def finish(job):
    """Run the job as its worker would; returns it done."""
    return deletion.run_job(job.pk, job.holder)


def test_deleting_a_flow_answers_202_and_it_is_gone_from_every_list_at_once(api, admin_client, ws, flow):
    schedule = factories.schedule(flow)
    finished_runs(flow, 3, ended=NOW)
    waiting = factories.flow_run(flow, state=State.SCHEDULED, scheduled_start=timezone.now() - timedelta(minutes=1),
                                 work_queue=factories.work_queue(ws, name="default"))
    answer = admin_client.delete(f"{prefix(ws)}/flows/{flow.pk}/")
    assert answer.status_code == 202, answer.content
    job = answer.json()
    assert job["state"] == "PENDING" and job["target_name"] == flow.name and job["requested_by"]
    assert answer["Location"] == job["url"] == f"{prefix(ws)}/deletion_jobs/{job['id']}/"
    # Gone from the lists of flows, schedules and runs, and from its own URL.
    assert admin_client.get(f"{prefix(ws)}/flows/").json()["results"] == []
    assert admin_client.get(f"{prefix(ws)}/flows/{flow.pk}/").status_code == 404
    assert admin_client.get(f"{prefix(ws)}/schedules/").json()["results"] == []
    assert admin_client.get(f"{prefix(ws)}/flow_runs/").json()["results"] == []
    # The scheduler stops making its runs; no agent can claim the run that was waiting.
    assert scheduler.run_once(timezone.now())["runs_created"] == 0
    assert Schedule.all_objects.get(pk=schedule.pk).deleted_at is not None
    agent = factories.agent(ws)
    agent.queues.set([waiting.work_queue])
    assert claim_due_runs(agent, limit=10, now=timezone.now()) == []
    # The rows are all still there: the job deletes them.
    assert everything_of(flow)["runs"] == 4
    entry = AuditEntry.objects.get(action="flow.delete")
    assert entry.target_name == flow.name and entry.after == {"deletion_job": job["id"]}


def test_a_deleted_flows_name_is_free_at_once(admin_client, ws, flow):
    finished_runs(flow, 2, ended=NOW)
    admin_client.delete(f"{prefix(ws)}/flows/{flow.pk}/")
    again = admin_client.post(f"{prefix(ws)}/flows/", {"name": flow.name, "version": {"entrypoint": "m:f"}},
                              format="json")
    assert again.status_code == 201, again.content
    new = Flow.objects.get(name=flow.name)
    finish(DeletionJob.objects.get())
    assert Flow.objects.filter(name=flow.name).get() == new  # the job deleted the old one only


def test_the_job_deletes_the_flows_rows_in_batches_and_nothing_else(ws, flow, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELETION_BATCH_SIZE": 4}
    factories.schedule(flow)
    finished_runs(flow, 10, ended=NOW)
    other = factories.flow(ws)
    finished_runs(other, 3, ended=NOW)
    before = everything_of(other)
    job = actions.delete_flow(flow, who=WHO)
    done = finish(job)
    assert done.state == DeletionState.DONE and done.finished and done.error == ""
    assert done.runs_deleted == 10
    assert everything_of(flow) == {"runs": 0, "task_runs": 0, "history": 0, "logs": 0, "schedules": 0,
                                   "versions": 0, "flow": 0}
    # 10 runs + 20 task runs + 30 history + 40 logs, then the schedule, the version and the flow.
    assert done.rows_deleted == 100 + 3
    assert everything_of(other) == before


def test_the_request_costs_the_same_queries_for_a_flow_with_5_or_500_runs(ws):
    def queries_to_delete(runs):
        flow = factories.flow(ws)
        factories.schedule(flow)
        finished_runs(flow, runs, ended=NOW, tasks=1, logs=1)
        with CaptureQueriesContext(connection) as captured:
            actions.delete_flow(flow, who=WHO)
        return len(captured)

    assert queries_to_delete(5) == queries_to_delete(500) <= 12


def test_deleting_a_schedule_deletes_its_runs_and_frees_its_slug(admin_client, ws, flow):
    schedule = factories.schedule(flow, slug="hourly")
    mine = finished_runs(flow, 4, ended=NOW, schedule=schedule, schedule_slug="hourly")
    manual = finished_runs(flow, 2, ended=NOW)
    answer = admin_client.delete(f"{prefix(ws)}/schedules/{schedule.pk}/")
    assert answer.status_code == 202
    assert admin_client.get(f"{prefix(ws)}/flow_runs/").json()["results"].__len__() == 2  # the manual ones
    body = {"flow": flow.name, "slug": "hourly", "kind": "interval", "interval_seconds": 3600}
    again = admin_client.post(f"{prefix(ws)}/schedules/", body, format="json")
    assert again.status_code == 201, again.content
    assert FlowRun.objects.filter(schedule_id=again.json()["id"], state=State.SCHEDULED).count() == 10
    done = finish(DeletionJob.objects.get())
    assert done.state == DeletionState.DONE and done.runs_deleted == 4
    assert rows_of([r.pk for r in mine])["runs"] == 0 and rows_of([r.pk for r in manual])["runs"] == 2
    assert not Schedule.all_objects.filter(pk=schedule.pk).exists()
    assert FlowRun.objects.filter(schedule_id=again.json()["id"]).count() == 10  # the new one's runs stay


def test_deleting_a_workspace_stops_its_keys_and_deletes_everything_in_it(api, ws, other_ws, flow):
    _, secret = factories.api_key(ws, role=Role.ADMIN)
    finished_runs(flow, 3, ended=NOW)
    factories.schedule(flow)
    theirs = factories.flow(other_ws)
    finished_runs(theirs, 2, ended=NOW)
    before = everything_of(theirs)
    assert api.as_key(secret).get(f"{prefix(ws)}/flows/").status_code == 200
    job = actions.delete_workspace(ws, who=Who.command("test"))
    assert api.as_key(secret).get(f"{prefix(ws)}/flows/").status_code in (401, 404)
    assert not Workspace.objects.filter(pk=ws.pk).exists() and Workspace.all_objects.filter(pk=ws.pk).exists()
    done = finish(job)
    assert done.state == DeletionState.DONE and done.runs_deleted == 3
    assert not Workspace.all_objects.filter(pk=ws.pk).exists()
    assert not TaskRun.objects.filter(flow_run__workspace_id=ws.pk).exists()
    assert DeletionJob.objects.filter(pk=job.pk, workspace__isnull=True, workspace_name=str(ws)).exists()
    assert everything_of(theirs) == before


def test_a_workspaces_slug_is_free_at_once(ws):
    actions.delete_workspace(ws, who=Who.command("test"))
    again = factories.workspace(account_obj=ws.account, slug=ws.slug)
    assert Workspace.objects.get(account=ws.account, slug=ws.slug) == again


def test_deleting_twice_makes_one_job(ws, flow):
    assert actions.delete_flow(flow, who=WHO) is not None
    assert actions.delete_flow(Flow.all_objects.get(pk=flow.pk), who=WHO) is None
    assert DeletionJob.objects.count() == 1


def test_progress_is_visible_in_the_api_to_admins_only(api, admin_client, ws, flow):
    finished_runs(flow, 2, ended=NOW)
    job = actions.delete_flow(flow, who=WHO)
    finish(job)
    rows = admin_client.get(f"{prefix(ws)}/deletion_jobs/").json()["results"]
    assert [(r["id"], r["state"], r["runs_deleted"]) for r in rows] == [(str(job.pk), "DONE", 2)]
    factories.member(ws, role=Role.OPERATOR)
    operator = api.as_key(factories.api_key(ws, role=Role.OPERATOR)[1])
    assert operator.get(f"{prefix(ws)}/deletion_jobs/").status_code == 403


def test_operators_may_not_delete_flows_or_schedules(api, ws, flow):
    schedule = factories.schedule(flow)
    client = api.as_key(factories.api_key(ws, role=Role.OPERATOR)[1])
    assert client.delete(f"{prefix(ws)}/flows/{flow.pk}/").status_code == 403
    assert client.delete(f"{prefix(ws)}/schedules/{schedule.pk}/").status_code == 403
    assert not DeletionJob.objects.exists()


def test_a_worker_that_lost_its_lease_stops_and_undoes_its_batch(ws, flow, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELETION_BATCH_SIZE": 2}
    finished_runs(flow, 6, ended=NOW, tasks=1, logs=1)
    job = actions.delete_flow(flow, who=WHO)
    calls = []

    def clock():
        # After the claim, another worker takes the job over before this one records its first batch.
        calls.append(1)
        if len(calls) == 2:
            DeletionJob.objects.filter(pk=job.pk).update(holder=uuid.uuid4())
        return timezone.now()

    assert deletion.run_job(job.pk, job.holder, now=clock) is None
    assert FlowRun.objects.filter(flow=flow).count() == 6  # its batch was rolled back with the progress


def test_the_service_resumes_a_job_only_once_its_lease_ran_out(ws, flow, monkeypatch):
    finished_runs(flow, 2, ended=NOW)
    job = actions.delete_flow(flow, who=WHO, now=NOW)
    sent = []
    monkeypatch.setattr("services.tasks.delete_in_background.delay", lambda *args: sent.append(args))
    assert deletion_jobs.run_once(NOW + timedelta(seconds=60)) == {"jobs_resumed": 0}
    later = NOW + timedelta(seconds=301)
    assert deletion_jobs.run_once(later) == {"jobs_resumed": 1}
    job.refresh_from_db()
    assert sent == [(str(job.pk), str(job.holder))]
    deletion.run_job(*map(uuid.UUID, sent[0]))
    job.refresh_from_db()
    assert job.state == DeletionState.DONE and job.attempts == 1
    assert deletion_jobs.run_once(later + timedelta(days=1)) == {"jobs_resumed": 0}


def test_a_failing_job_records_its_error_and_is_retried_then_failed(ws, flow, monkeypatch):
    finished_runs(flow, 1, ended=NOW)
    job = actions.delete_flow(flow, who=WHO, now=NOW)

    def broken(runs, size):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(deletion, "purge_batch", broken)
    holder = job.holder
    for attempt in range(1, deletion.MAX_ATTEMPTS + 1):
        done = deletion.run_job(job.pk, holder)
        assert "disk on fire" in done.error and done.attempts == attempt
        holder = dict(deletion.take_over_stale(timezone.now() + timedelta(seconds=1))).get(job.pk, holder)
    assert done.state == DeletionState.FAILED


def test_the_request_enqueues_the_job_after_its_commit(ws, flow, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr("services.tasks.delete_in_background.delay", lambda *args: sent.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        job = actions.delete_flow(flow, who=WHO)
    assert sent == [(str(job.pk), str(job.holder))]


def test_a_broker_that_refuses_the_task_leaves_the_job_to_the_service(ws, flow, monkeypatch,
                                                                       django_capture_on_commit_callbacks):
    def refuse(*args):
        raise ConnectionError("broker down")

    monkeypatch.setattr("services.tasks.delete_in_background.delay", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        job = actions.delete_flow(flow, who=WHO)
    assert DeletionJob.objects.get(pk=job.pk).state == DeletionState.PENDING


# --- the admin ----------------------------------------------------------------------------------

def test_the_admin_deletes_a_flow_in_the_background_and_lists_the_job(client, ws, flow):
    person = factories.member(ws, role=Role.ADMIN, is_staff=True)
    client.force_login(person)
    finished_runs(flow, 3, ended=NOW)
    confirm = client.get(f"/admin/runs/flow/{flow.pk}/delete/")
    assert confirm.status_code == 200 and "deleted in the background" in confirm.content.decode()
    page = client.post(f"/admin/runs/flow/{flow.pk}/delete/", {"post": "yes"})
    assert page.status_code == 302
    assert not Flow.objects.filter(pk=flow.pk).exists() and FlowRun.objects.filter(flow=flow).count() == 3
    assert AuditEntry.objects.filter(action="flow.delete", via="admin").exists()
    assert list(client.get("/admin/runs/flow/").context["cl"].result_list) == []
    assert list(client.get("/admin/runs/flowrun/").context["cl"].result_list) == []
    jobs = client.get("/admin/runs/deletionjob/")
    assert jobs.status_code == 200 and flow.name in jobs.content.decode()


def test_only_a_platform_admin_deletes_a_workspace_in_the_admin(client, admin_user, ws):
    person = factories.member(ws, role=Role.ADMIN, is_staff=True)
    client.force_login(person)
    assert client.post(f"/admin/runs/workspace/{ws.pk}/delete/", {"post": "yes"}).status_code == 403
    client.force_login(admin_user)
    assert client.post(f"/admin/runs/workspace/{ws.pk}/delete/", {"post": "yes"}).status_code == 302
    assert DeletionJob.objects.filter(target_type="workspace", target_id=str(ws.pk)).exists()
    assert not Workspace.objects.filter(pk=ws.pk).exists()


def test_task_runs_of_a_deleted_flow_leave_the_task_run_list(admin_client, ws, flow):
    run, = finished_runs(flow, 1, ended=NOW)
    kept, = finished_runs(factories.flow(ws), 1, ended=NOW)
    assert len(admin_client.get(f"{prefix(ws)}/task_runs/").json()["results"]) == 4
    actions.delete_flow(flow, who=WHO)
    listed = admin_client.get(f"{prefix(ws)}/task_runs/").json()["results"]
    assert {row["flow_run"] for row in listed} == {str(kept.pk)}
