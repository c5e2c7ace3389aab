"""Reactive and proactive triggers and compounds, evaluated with an injected clock."""

import pytest
from django.db import transaction

from automations import engine, proactive as proactive_service
from automations.models import Automation, Firing, TriggerBucket
from tests import factories

from .conftest import at, automation, event, firings, proactive, reactive

pytestmark = pytest.mark.django_db

HEARTBEAT = proactive(["flow-run.state.running", "flow-run.heartbeat"],
                      ["flow-run.heartbeat", "flow-run.state.completed", "flow-run.state.failed"], within=300)


# --- reactive -----------------------------------------------------------------------------------

def test_threshold_three_needs_three_events_in_the_window_and_then_starts_over(bare_ws):
    a = automation(bare_ws, reactive(["flow-run.state.failed"], threshold=3, within=60))
    engine.on_events([event(bare_ws, "flow-run.state.failed", 0), event(bare_ws, "flow-run.state.failed", 10)], at(10))
    assert firings(a) == []
    assert TriggerBucket.objects.get(automation=a).count == 2
    third = event(bare_ws, "flow-run.state.failed", 30)
    engine.on_events([third], at(30))
    [fired] = firings(a)
    assert fired.fired == at(30) and str(third.id) in fired.event_ids and len(fired.event_ids) == 3
    # The bucket was reset: the same events never fire twice, two more are not enough.
    assert not TriggerBucket.objects.filter(automation=a).exists()
    engine.on_events([event(bare_ws, "flow-run.state.failed", 31), event(bare_ws, "flow-run.state.failed", 32)], at(32))
    assert len(firings(a)) == 1
    a.refresh_from_db()
    assert a.last_fired == at(30)


def test_events_outside_the_window_do_not_count(bare_ws):
    a = automation(bare_ws, reactive(["flow-run.state.failed"], threshold=3, within=60))
    engine.on_events([event(bare_ws, "flow-run.state.failed", 0), event(bare_ws, "flow-run.state.failed", 50)], at(50))
    # 70 s is past the window opened at 0: a new window opens with this event alone.
    engine.on_events([event(bare_ws, "flow-run.state.failed", 70)], at(70))
    assert firings(a) == []
    bucket = TriggerBucket.objects.get(automation=a)
    assert (bucket.count, bucket.opened) == (1, at(70))
    engine.on_events([event(bare_ws, "flow-run.state.failed", 80), event(bare_ws, "flow-run.state.failed", 129)], at(129))
    assert len(firings(a)) == 1


def test_one_batch_counts_in_order_of_occurrence(bare_ws):
    a = automation(bare_ws, reactive(["service.failed"], threshold=2, within=10))
    engine.on_events([event(bare_ws, "service.failed", 25), event(bare_ws, "service.failed", 0),
                      event(bare_ws, "service.failed", 5)], at(30))
    # 0 and 5 fire; 25 opens the next window.
    assert len(firings(a)) == 1
    assert TriggerBucket.objects.get(automation=a).count == 1


def test_for_each_counts_every_resource_apart(bare_ws):
    a = automation(bare_ws, reactive(["service.failed"], threshold=2, within=600, for_each="resource"))
    engine.on_events([event(bare_ws, "service.failed", 0, kind="service", id="lazarus"),
                      event(bare_ws, "service.failed", 1, kind="service", id="scheduler")], at(1))
    assert firings(a) == []
    assert TriggerBucket.objects.filter(automation=a).count() == 2
    engine.on_events([event(bare_ws, "service.failed", 2, kind="service", id="lazarus")], at(2))
    [fired] = firings(a)
    assert fired.key == "service:lazarus" and fired.resource == {"kind": "service", "id": "lazarus"}
    assert list(TriggerBucket.objects.filter(automation=a).values_list("key", flat=True)) == ["service:scheduler"]


def test_threshold_one_fires_once_per_matching_event(bare_ws):
    a = automation(bare_ws, reactive(["flow-run.state.failed", "flow-run.state.crashed"]))
    engine.on_events([event(bare_ws, "flow-run.state.failed", 0, id="a"), event(bare_ws, "flow-run.state.crashed", 1, id="b"),
                      event(bare_ws, "flow-run.state.completed", 2, id="c")], at(2))
    assert [f.resource["id"] for f in firings(a)] == ["a", "b"]
    assert not TriggerBucket.objects.filter(automation=a).exists()


def test_names_are_glob_patterns(bare_ws):
    a = automation(bare_ws, reactive(["flow-run.state.*"]))
    engine.on_events([event(bare_ws, "flow-run.state.failed"), event(bare_ws, "task-run.state.failed"),
                      event(bare_ws, "flow-run.heartbeat"), event(bare_ws, "flow-run.state.cancelled")], at(0))
    assert len(firings(a)) == 2


def test_resource_and_related_filters(bare_ws):
    a = automation(bare_ws, reactive(["flow-run.state.*"], resource_kind=["flow-run"], resource_id=["r1", "r2"],
                                     related=[{"kind": "flow", "id": "5"}]))
    flow5, flow6 = {"kind": "flow", "id": "5"}, {"kind": "flow", "id": "6"}
    engine.on_events([
        event(bare_ws, "flow-run.state.failed", id="r1", related=[flow5, {"kind": "work-queue", "id": "1"}]),  # yes
        event(bare_ws, "flow-run.state.failed", id="r2", related=[flow6]),  # another flow
        event(bare_ws, "flow-run.state.failed", id="r3", related=[flow5]),  # another run
        event(bare_ws, "flow-run.state.failed", id="r2"),  # names no flow
        event(bare_ws, "flow-run.state.failed", kind="task-run", id="r1", related=[flow5]),  # another kind
    ], at(0))
    assert [(f.resource["kind"], f.resource["id"]) for f in firings(a)] == [("flow-run", "r1")]


def test_validation_fills_in_defaults_and_reads_numeric_ids_as_text():
    from automations.triggers import validate_trigger

    assert validate_trigger({"type": "event", "match": {"name": "service.failed", "resource_id": [5]}}) == {
        "type": "event", "posture": "reactive", "match": {"name": ["service.failed"], "resource_id": ["5"]},
        "threshold": 1, "within": 0, "for_each": None}


def test_an_automation_sees_only_its_own_workspace(bare_ws, other_ws):
    a = automation(bare_ws, reactive(["service.failed"]))
    engine.on_events([event(other_ws, "service.failed")], at(0))
    assert firings(a) == []


def test_a_disabled_automation_does_not_fire(bare_ws):
    a = automation(bare_ws, reactive(["service.failed"]), enabled=False)
    engine.on_events([event(bare_ws, "service.failed")], at(0))
    assert firings(a) == []


# --- proactive ----------------------------------------------------------------------------------

def test_heartbeats_keep_the_bucket_open_and_silence_fires_exactly_once(bare_ws):
    a = automation(bare_ws, HEARTBEAT, actions=[{"type": "mark-crashed"}])
    engine.on_events([event(bare_ws, "flow-run.state.running", 0)], at(0))
    assert TriggerBucket.objects.get(automation=a).deadline == at(300)
    for beat in (200, 400, 600):  # each heartbeat closes and re-opens: the deadline moves on
        engine.on_events([event(bare_ws, "flow-run.heartbeat", beat)], at(beat))
        assert proactive_service.run_once(at(beat + 10))["buckets_fired"] == 0
    assert TriggerBucket.objects.get(automation=a).deadline == at(900)
    assert proactive_service.run_once(at(899))["buckets_fired"] == 0
    assert proactive_service.run_once(at(900))["buckets_fired"] == 1
    assert proactive_service.run_once(at(1000))["buckets_fired"] == 0
    [fired] = firings(a)
    assert fired.resource == {"kind": "flow-run", "id": "r1"} and fired.key == "flow-run:r1"
    assert fired.fired == at(900) and "within 300 s" in fired.reason
    assert not TriggerBucket.objects.filter(automation=a).exists()


def test_an_expected_event_closes_the_bucket(bare_ws):
    a = automation(bare_ws, HEARTBEAT)
    engine.on_events([event(bare_ws, "flow-run.state.running", 0, id="done"),
                      event(bare_ws, "flow-run.state.running", 0, id="silent")], at(0))
    engine.on_events([event(bare_ws, "flow-run.state.completed", 100, id="done")], at(100))
    assert proactive_service.run_once(at(301))["buckets_fired"] == 1
    assert [f.resource["id"] for f in firings(a)] == ["silent"]


def test_an_expected_event_in_the_same_batch_after_the_opener_closes_it(bare_ws):
    a = automation(bare_ws, HEARTBEAT)
    engine.on_events([event(bare_ws, "flow-run.state.completed", 5), event(bare_ws, "flow-run.state.running", 0)], at(5))
    assert not TriggerBucket.objects.filter(automation=a).exists()


def test_a_queue_not_polled_for_five_minutes(bare_ws):
    a = automation(bare_ws, proactive(["work-queue.polled"], ["work-queue.polled"], within=300))
    engine.on_events([event(bare_ws, "work-queue.polled", 0, kind="work-queue", id="1"),
                      event(bare_ws, "work-queue.polled", 0, kind="work-queue", id="2")], at(0))
    engine.on_events([event(bare_ws, "work-queue.polled", 250, kind="work-queue", id="2")], at(250))
    proactive_service.run_once(at(300))
    assert [f.resource["id"] for f in firings(a)] == ["1"]
    proactive_service.run_once(at(550))
    assert [f.resource["id"] for f in firings(a)] == ["1", "2"]


def test_a_disabled_automations_buckets_do_not_fire_and_are_cleared(bare_ws):
    a = automation(bare_ws, HEARTBEAT)
    engine.on_events([event(bare_ws, "flow-run.state.running", 0)], at(0))
    Automation.objects.filter(pk=a.pk).update(enabled=False)
    assert proactive_service.run_once(at(400)) == {"buckets_fired": 0, "stale_buckets_deleted": 1,
                                              "expired_deliveries_deleted": 0, "expired_firings_deleted": 0}
    assert firings(a) == []


def test_a_bucket_taken_by_another_pass_is_not_fired_again(bare_ws):
    """The conditional delete decides: a copy that read a bucket another copy fired since removes
    nothing and fires nothing."""
    a = automation(bare_ws, HEARTBEAT)
    engine.on_events([event(bare_ws, "flow-run.state.running", 0)], at(0))
    [stale_read] = proactive_service.due_buckets(at(300))
    assert proactive_service.run_once(at(300))["buckets_fired"] == 1
    assert proactive_service.fire_due_bucket(stale_read, at(300)) is False
    assert len(firings(a)) == 1


def test_a_heartbeat_between_the_read_and_the_take_keeps_the_bucket_open(bare_ws):
    a = automation(bare_ws, HEARTBEAT)
    engine.on_events([event(bare_ws, "flow-run.state.running", 0)], at(0))
    [read] = proactive_service.due_buckets(at(300))
    engine.on_events([event(bare_ws, "flow-run.heartbeat", 299)], at(300))  # came in meanwhile
    assert proactive_service.fire_due_bucket(read, at(300)) is False
    assert firings(a) == [] and TriggerBucket.objects.get(automation=a).deadline == at(599)


def test_a_bucket_whose_firing_raises_is_dropped_and_the_pass_goes_on(bare_ws, monkeypatch):
    a = automation(bare_ws, HEARTBEAT)
    engine.on_events([event(bare_ws, "flow-run.state.running", 0, id="bad"),
                      event(bare_ws, "flow-run.state.running", 1, id="good")], at(1))
    real = proactive_service.fire_silent_bucket

    def fire(bucket, now):
        if bucket.key == "flow-run:bad":
            raise RuntimeError("broken")
        return real(bucket, now)

    monkeypatch.setattr(proactive_service, "fire_silent_bucket", fire)
    assert proactive_service.run_once(at(400))["buckets_fired"] == 1
    assert [f.key for f in firings(a)] == ["flow-run:good"]
    assert not TriggerBucket.objects.filter(automation=a).exists()


# --- compound -----------------------------------------------------------------------------------

def compound(require, within):
    return {"type": "compound", "require": require, "within": within,
            "triggers": [reactive(["flow-run.state.failed"]), reactive(["work-queue.unhealthy"])]}


def test_compound_all_fires_when_both_parts_fired_within_the_window(bare_ws):
    a = automation(bare_ws, compound("all", 60))
    engine.on_events([event(bare_ws, "flow-run.state.failed", 0)], at(0))
    assert firings(a) == []
    assert TriggerBucket.objects.get(automation=a, path="0", key="").fired == at(0)
    engine.on_events([event(bare_ws, "work-queue.unhealthy", 90, kind="work-queue")], at(90))
    assert firings(a) == []  # 90 s apart: too far
    engine.on_events([event(bare_ws, "flow-run.state.failed", 100)], at(100))
    [fired] = firings(a)
    assert "all parts fired" in fired.reason and len(fired.event_ids) == 2
    assert not TriggerBucket.objects.filter(automation=a).exists()  # it starts over


def test_compound_any_fires_on_either_part(bare_ws):
    a = automation(bare_ws, compound("any", 0))
    engine.on_events([event(bare_ws, "flow-run.state.failed", 0),
                      event(bare_ws, "work-queue.unhealthy", 5, kind="work-queue")], at(5))
    assert [f.reason.split(":")[0] for f in firings(a)] == ["part 1", "part 2"]


def test_compound_with_a_proactive_part(bare_ws):
    trigger = {"type": "compound", "require": "all", "within": 120,
               "triggers": [HEARTBEAT, reactive(["work-queue.unhealthy"])]}
    a = automation(bare_ws, trigger)
    engine.on_events([event(bare_ws, "flow-run.state.running", 0),
                      event(bare_ws, "work-queue.unhealthy", 250, kind="work-queue")], at(250))
    assert firings(a) == []
    assert TriggerBucket.objects.get(automation=a, path="0").key == "flow-run:r1"
    proactive_service.run_once(at(300))  # the silent part fires at its deadline (300), 50 s after the other
    [fired] = firings(a)
    assert "all parts fired" in fired.reason


# --- loop guard and isolation ---------------------------------------------------------------------

def test_an_automation_never_reacts_to_its_own_firing(bare_ws):
    a = automation(bare_ws, reactive(["automation.fired", "service.failed"]))
    b = automation(bare_ws, reactive(["automation.fired"]))
    engine.on_events([event(bare_ws, "service.failed")], at(0))
    assert len(firings(a)) == 1 and firings(b) == []
    echo = event(bare_ws, "automation.fired", 1, kind="automation", id=a.pk)
    engine.on_events([echo], at(1))
    assert len(firings(a)) == 1  # not its own echo
    assert len(firings(b)) == 1  # another automation may react to it


def test_automations_reacting_to_each_other_stop_after_a_short_chain(bare_ws, flush_events):
    ping = automation(bare_ws, reactive(["service.failed", "automation.fired"]), name="ping")
    pong = automation(bare_ws, reactive(["automation.fired"]), name="pong")
    engine.on_events([event(bare_ws, "service.failed")], at(0))  # ping fires (chain 1)
    for _ in range(6):
        flush_events()  # each pass stores the last firings' events, which may fire the other one
    # ping (1) → pong (2) → ping (3), and the chain stops there.
    assert (len(firings(ping)), len(firings(pong))) == (2, 1)
    chains = sorted(e.payload["chain"] for e in flush_events().filter(name="automation.fired"))
    assert chains == [1, 2, 3]


def test_one_automation_failing_does_not_stop_the_others(bare_ws, caplog):
    broken = automation(bare_ws, {"type": "event", "posture": "reactive", "match": {"name": [5]}}, name="broken")
    counting = automation(bare_ws, reactive(["service.failed"], threshold=5, within=60), name="counting")
    working = automation(bare_ws, reactive(["service.failed"]), name="working")
    engine.on_events([event(bare_ws, "service.failed")], at(0))
    assert firings(broken) == [] and len(firings(working)) == 1
    assert TriggerBucket.objects.get(automation=counting).count == 1
    assert "broken" in caplog.text


def test_an_automation_failing_mid_evaluation_loses_only_its_own_changes(bare_ws, monkeypatch):
    first = automation(bare_ws, reactive(["service.failed"], threshold=5, within=60), name="first")
    second = automation(bare_ws, reactive(["service.failed"], threshold=5, within=60), name="second")
    real_react = engine.Evaluation.react

    def react(self, auto, path, matcher, events):
        real_react(self, auto, path, matcher, events)
        if auto.pk == first.pk:
            raise RuntimeError("boom after counting")

    monkeypatch.setattr(engine.Evaluation, "react", react)
    engine.on_events([event(bare_ws, "service.failed")], at(0))
    assert not TriggerBucket.objects.filter(automation=first).exists()
    assert TriggerBucket.objects.get(automation=second).count == 1


def test_actions_that_raise_are_recorded_and_other_automations_act(bare_ws, monkeypatch):
    bad = automation(bare_ws, reactive(["service.failed"]), name="bad")
    good = automation(bare_ws, reactive(["service.failed"]), name="good")
    seen = []

    def run_actions(auto, firing, context, now):
        if auto.pk == bad.pk:
            raise RuntimeError("mail server on fire")
        seen.append((auto.pk, [str(e.id) for e in context["events"]], context["resource"]))
        return [{"type": "send-email", "ok": True, "detail": "queued"}]

    monkeypatch.setattr(engine, "run_actions", run_actions)
    e = event(bare_ws, "service.failed", kind="service", id="lazarus")
    engine.on_events([e], at(0))
    assert firings(bad)[0].results[0]["ok"] is False and "mail server on fire" in firings(bad)[0].results[0]["detail"]
    assert firings(good)[0].results == [{"type": "send-email", "ok": True, "detail": "queued"}]
    assert seen == [(good.pk, [str(e.id)], {"kind": "service", "id": "lazarus"})]


# --- fire --------------------------------------------------------------------------------------------

def test_fire_records_the_firing_runs_actions_and_emits_automation_fired(bare_ws, flush_events, monkeypatch):
    a = automation(bare_ws, reactive(["service.failed"]), actions=[{"type": "mark-crashed"}])
    monkeypatch.setattr(engine, "run_actions", lambda auto, firing, context, now: [
        {"type": "mark-crashed", "ok": True, "detail": f"for {context['reason']}"}])
    firing = engine.fire(a, "flow-run:r9", [], {"kind": "flow-run", "id": "r9"}, "because", at(5))
    assert Firing.objects.get(pk=firing.pk).results == [{"type": "mark-crashed", "ok": True, "detail": "for because"}]
    stored = flush_events().filter(name="automation.fired")
    [fired_event] = stored
    assert fired_event.resource == {"kind": "automation", "id": str(a.pk), "name": a.name}
    assert fired_event.related == [{"kind": "flow-run", "id": "r9"}]
    assert fired_event.payload["firing_id"] == firing.pk


def test_events_emitted_by_a_change_reach_the_engine_through_the_persister(bare_ws, flush_events):
    """End to end: a state change emits its event after commit; the persister stores it and calls
    the engine in the same transaction; the automation fires and says so with an event of its own."""
    from runs.states import transition_flow_runs
    from runs.models import Actor, FlowRun, State

    a = automation(bare_ws, reactive(["flow-run.state.failed"]), name="on failure")
    run = factories.flow_run(factories.flow(bare_ws), state=State.RUNNING)
    transition_flow_runs(FlowRun.objects.filter(pk=run.pk), State.FAILED, actor=Actor.USER, message="broke")
    flush_events()
    [fired] = firings(a)
    assert fired.resource["id"] == str(run.pk)
    # Its automation.fired event is emitted after the persister's transaction, and stored on the next pass.
    assert flush_events().filter(name="automation.fired", resource__id=str(a.pk)).count() == 1
    assert len(firings(a)) == 1


# --- set-based ----------------------------------------------------------------------------------------

def test_a_batch_of_500_events_costs_a_fixed_number_of_queries(bare_ws, other_ws, monkeypatch,
                                                               django_assert_max_num_queries):
    # The actions' own queries are theirs (automations/actions.py); this pins the engine's.
    monkeypatch.setattr(engine, "run_actions", lambda *args: [])
    Automation.objects.filter(workspace=other_ws).delete()
    for ws in (bare_ws, other_ws):
        automation(ws, HEARTBEAT)
        automation(ws, reactive(["flow-run.state.failed"], threshold=3, within=600, for_each="resource"))
        automation(ws, reactive(["service.failed"], threshold=1))
        automation(ws, compound("all", 60))
    batch = []
    for i in range(250):
        for ws in (bare_ws, other_ws):
            name = ["flow-run.state.running", "flow-run.heartbeat", "flow-run.state.failed", "flow-run.state.completed",
                    "service.failed"][i % 5]
            batch.append(event(ws, name, i, id=f"r{i % 40}"))
    # 1 automations + 1 buckets read + 1 delete + 1 upsert + firings (1 INSERT per ~120 rows on SQLite,
    # its variable limit; 1 on PostgreSQL) + 1 last_fired + 1 earlier events + 1 savepoint pair per
    # automation that fired + 1 results UPDATE (batched like the INSERT): none per event.
    with django_assert_max_num_queries(22):
        with transaction.atomic():
            fired = engine.on_events(batch, at(300))
    assert fired > 100  # many firings (threshold-1, thresholds per run, compound), in a fixed number of queries
    assert TriggerBucket.objects.exists()


def test_the_default_crashes_a_run_whose_heartbeats_stop_end_to_end(ws, flush_events):
    """Runs beat (their heartbeat events open the default's bucket through the persister); one
    finishes, one beats on, one goes silent, and one never sent a heartbeat (heartbeats off): only
    the silent one is fired about, 5 minutes after its last beat."""
    from events.emit import emit, make, resource
    from runs.models import Actor, FlowRun, State
    from runs.states import transition_flow_runs

    def beat(run, second):
        emit([make(ws.pk, "flow-run.heartbeat", resource("flow-run", run.pk), occurred=at(second))])

    crash = Automation.objects.get(workspace=ws, default_key="crash-silent-runs")
    quiet, done, beating, mute = (factories.flow_run(factories.flow(ws), state=State.SUBMITTED) for _ in range(4))
    transition_flow_runs(FlowRun.objects.filter(pk__in=[quiet.pk, done.pk, beating.pk, mute.pk]), State.RUNNING,
                         actor=Actor.USER, message="started", now=at(0))
    for run in (quiet, done, beating):
        beat(run, 10)
    flush_events()
    transition_flow_runs(FlowRun.objects.filter(pk=done.pk), State.COMPLETED, actor=Actor.USER, message="done",
                         now=at(100))
    beat(beating, 200)
    flush_events()
    assert proactive_service.run_once(at(309))["buckets_fired"] == 0
    assert proactive_service.run_once(at(310))["buckets_fired"] == 1
    [fired] = firings(crash)
    assert fired.resource == {"kind": "flow-run", "id": str(quiet.pk)}
    # `beating` last beat at 200 and goes silent too; `mute` never beat, so nothing ever waits for it.
    assert proactive_service.run_once(at(499))["buckets_fired"] == 0
    assert proactive_service.run_once(at(500))["buckets_fired"] == 1
    assert proactive_service.run_once(at(100_000))["buckets_fired"] == 0
    assert {f.resource["id"] for f in firings(crash)} == {str(quiet.pk), str(beating.pk)}
