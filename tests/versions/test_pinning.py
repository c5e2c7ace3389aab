"""A schedule follows its flow's latest version or is pinned to one: which version its runs run."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db.models import RestrictedError
from django.utils import timezone

from runs import actions
from runs.audit import Who
from runs.claiming import claim_due_runs
from runs.models import AuditEntry, Flow, FlowRun, FlowVersion, Schedule, State
from runs.scheduling import create_manual_run, schedule_future_runs
from tests import factories

from .conftest import versions_of

pytestmark = pytest.mark.django_db
WHO = Who("tester", None, "test")


def agent_for(ws):
    queue = factories.work_queue(ws)
    agent = factories.agent(ws)
    agent.queues.set([queue])
    return agent, queue


def due_run_of(schedule, queue, version, minutes_ago=1):
    """A waiting run of `schedule`, made (as the scheduler does) with `version`."""
    return factories.flow_run(schedule.flow, schedule=schedule, schedule_slug=schedule.slug, work_queue=queue,
                              flow_version=version, auto_scheduled=True,
                              scheduled_start=timezone.now() - timedelta(minutes=minutes_ago))


def claimed_versions(agent):
    claimed = claim_due_runs(agent, limit=50, now=timezone.now())
    versions = dict(FlowVersion.objects.filter(pk__in=[run.flow_version_id for run in claimed])
                    .values_list("pk", "version"))
    return {run.pk: versions[run.flow_version_id] for run in claimed}


def test_a_pinned_schedule_keeps_its_version_when_a_new_one_registers_and_a_following_one_moves(ws, flow):
    v = versions_of(flow)
    agent, queue = agent_for(ws)
    pinned = factories.schedule(flow, work_queue=queue)
    following = factories.schedule(flow, work_queue=queue)
    actions.pin_schedule(pinned, v["2"], who=WHO)
    pinned_run, following_run = due_run_of(pinned, queue, v["2"]), due_run_of(following, queue, v["3"])

    flow.register_version(entrypoint="etl.nightly:run", version="4")

    # What a waiting run shows moves with it, before any claim.
    assert FlowRun.objects.get(pk=pinned_run.pk).flow_version.version == "2"
    assert FlowRun.objects.get(pk=following_run.pk).flow_version.version == "4"
    assert claimed_versions(agent) == {pinned_run.pk: "2", following_run.pk: "4"}


def test_a_following_run_takes_the_latest_at_claim_time_not_the_one_it_was_made_with(ws, flow):
    v = versions_of(flow)
    agent, queue = agent_for(ws)
    following = factories.schedule(flow, work_queue=queue)
    run = due_run_of(following, queue, v["1"])  # made long ago, when 1 was the latest
    assert claimed_versions(agent) == {run.pk: "3"}
    assert FlowRun.objects.get(pk=run.pk).flow_version_id == v["3"].pk


def test_a_pinned_run_made_with_another_version_runs_the_pinned_one(ws, flow):
    v = versions_of(flow)
    agent, queue = agent_for(ws)
    schedule = factories.schedule(flow, work_queue=queue, flow_version=v["1"])
    run = due_run_of(schedule, queue, v["3"])
    assert claimed_versions(agent) == {run.pk: "1"}


def test_a_manual_run_without_a_schedule_keeps_the_version_it_was_made_with(ws, flow):
    v = versions_of(flow)
    agent, queue = agent_for(ws)
    run, _ = create_manual_run(flow, work_queue=queue)
    assert run.flow_version_id == v["3"].pk
    flow.register_version(entrypoint="etl.nightly:run", version="4")
    assert claimed_versions(agent) == {run.pk: "3"}


def test_run_now_of_a_pinned_schedule_runs_the_pinned_version_with_its_defaults(ws, flow):
    v = versions_of(flow)
    schedule = factories.schedule(flow, flow_version=v["2"])
    run, _ = create_manual_run(flow, schedule=schedule)
    assert run.flow_version_id == v["2"].pk
    assert run.parameters == {"day": "yesterday"}


def test_the_scheduler_makes_a_pinned_schedules_runs_with_the_pinned_version(ws, flow):
    v = versions_of(flow)
    pinned = factories.schedule(flow, flow_version=v["1"])
    following = factories.schedule(flow)
    assert schedule_future_runs([pinned, following], timezone.now(), count=3) == 6
    assert set(FlowRun.objects.filter(schedule=pinned).values_list("flow_version__version", flat=True)) == {"1"}
    assert set(FlowRun.objects.filter(schedule=following).values_list("flow_version__version", flat=True)) == {"3"}


def test_pinning_an_archived_version_works_and_archiving_never_breaks_a_pin(ws, flow):
    v = versions_of(flow)
    assert v["1"].archived
    agent, queue = agent_for(ws)
    schedule = factories.schedule(flow, work_queue=queue)
    actions.pin_schedule(schedule, v["1"], who=WHO)
    flow.register_version(entrypoint="etl.nightly:run", version="4")
    flow.register_version(entrypoint="etl.nightly:run", version="5")
    run = due_run_of(schedule, queue, None)
    assert claimed_versions(agent) == {run.pk: "1"}
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id == v["1"].pk


def test_pin_and_unpin_repoint_waiting_runs_and_leave_started_ones(ws, flow):
    v = versions_of(flow)
    schedule = factories.schedule(flow)
    schedule_future_runs([schedule], timezone.now(), count=3)
    started = factories.flow_run(flow, schedule=schedule, state=State.RUNNING, flow_version=v["3"])
    actions.pin_schedule(schedule, v["2"], who=WHO)
    waiting = FlowRun.objects.filter(schedule=schedule, state=State.SCHEDULED)
    assert set(waiting.values_list("flow_version_id", flat=True)) == {v["2"].pk}
    assert FlowRun.objects.get(pk=started.pk).flow_version_id == v["3"].pk
    actions.pin_schedule(schedule, None, who=WHO)
    assert set(waiting.values_list("flow_version_id", flat=True)) == {v["3"].pk}


def test_pin_and_unpin_are_audited_once_each(ws, flow):
    v = versions_of(flow)
    schedule = factories.schedule(flow)
    actions.pin_schedule(schedule, v["2"], who=WHO)
    actions.pin_schedule(schedule, v["2"], who=WHO)  # no change, no entry
    actions.pin_schedule(schedule, None, who=WHO)
    entries = list(AuditEntry.objects.filter(target_type="schedule", target_id=str(schedule.pk)).order_by("id")
                   .values_list("action", "before", "after"))
    assert entries == [("schedule.pin", {"flow_version_id": None}, {"flow_version_id": v["2"].pk}),
                       ("schedule.unpin", {"flow_version_id": v["2"].pk}, {"flow_version_id": None})]


def test_a_version_of_another_flow_cannot_be_pinned(ws, flow):
    other = factories.flow(ws, name="other")
    schedule = factories.schedule(flow)
    with pytest.raises(ValidationError) as refused:
        actions.pin_schedule(schedule, other.latest_version, who=WHO)
    assert "flow_version" in refused.value.message_dict
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id is None
    assert not AuditEntry.objects.filter(action="schedule.pin").exists()
    # The model's own validation (the admin's form) says the same.
    schedule.flow_version = other.latest_version
    with pytest.raises(ValidationError) as refused:
        schedule.full_clean()
    assert "flow_version" in refused.value.message_dict


def test_deleting_a_pinned_version_is_refused_but_deleting_its_flow_works(ws, flow):
    v = versions_of(flow)
    factories.schedule(flow, flow_version=v["1"])
    with pytest.raises(RestrictedError):
        v["1"].delete()
    flow.delete()
    assert not Flow.objects.filter(pk=flow.pk).exists()
    assert not Schedule.objects.filter(flow_id=flow.pk).exists()


def test_the_claim_answer_carries_the_pinned_versions_entrypoint(ws, flow, api, key_for, prefix):
    from runs.models import Role

    v = versions_of(flow)
    agent, queue = agent_for(ws)
    schedule = factories.schedule(flow, work_queue=queue, flow_version=v["2"])
    due_run_of(schedule, queue, v["3"])
    client = api.as_key(key_for(Role.AGENT))
    answer = client.post(f"{prefix}/agent/claim", {"agent_id": agent.pk, "max_runs": 5}, format="json")
    assert answer.status_code == 200, answer.content
    [run] = answer.json()["runs"]
    assert run["entrypoint"] == "etl.flows:nightly"
    assert run["parameters"] == {"day": "yesterday"}
