"""Loops and floods: actions cause events (a resumed schedule, a crashed run) that no loop guard
can tell from any other, so an automation's firings per minute are capped
(ORCHESTRATOR_AUTOMATIONS_MAX_FIRINGS_PER_MINUTE): two automations pausing and resuming one
schedule stop, and one flood of events fires each automation a bounded number of times."""

import pytest
from django.utils import timezone

from automations.engine import on_events
from automations.models import Delivery, Firing
from events.emit import emit, make, resource
from runs import actions as setup_actions
from runs.audit import Who
from tests import factories

from .conftest import at, automation, event, reactive


def test_two_automations_pausing_and_resuming_one_schedule_stop_at_the_cap(bare_ws, flush_events, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AUTOMATIONS_MAX_FIRINGS_PER_MINUTE": 5}
    schedule = factories.schedule(factories.flow(bare_ws))
    resumer = automation(bare_ws, reactive(["schedule.paused"]), [{"type": "resume-schedule"}])
    pauser = automation(bare_ws, reactive(["schedule.resumed"]), [{"type": "pause-schedule"}])
    setup_actions.pause_schedule(schedule, who=Who("someone", None, "api"), now=timezone.now())
    for _ in range(30):  # a pass drains one round of the ping-pong (Redis) or up to MAX_BATCHES (table)
        flush_events()
    # Before the cap: 10 firings of each a pass (table buffer), and on for ever.
    assert Firing.objects.filter(automation=resumer).count() == 5
    assert Firing.objects.filter(automation=pauser).count() == 5


def test_a_flood_of_events_fires_each_automation_at_most_the_cap(bare_ws, settings, django_assert_max_num_queries):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AUTOMATIONS_MAX_FIRINGS_PER_MINUTE": 3}
    autos = [automation(bare_ws, reactive(["flow-run.state.failed"]),
                        [{"type": "call-webhook", "url": "https://example.com/hook"}]) for _ in range(20)]
    events = [event(bare_ws, "flow-run.state.failed", seconds=i % 50, id=f"r{i}") for i in range(2000)]
    with django_assert_max_num_queries(40 + 20 * 3 * 4):  # the kept firings' actions; not 40,000 firings
        on_events(events, at(60))
    assert Firing.objects.count() == 20 * 3
    assert Delivery.objects.count() == 20 * 3  # one webhook per firing kept, not per event
    assert all(Firing.objects.filter(automation=a).count() == 3 for a in autos)


def test_the_cap_counts_the_last_60_seconds_across_batches(bare_ws, settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "AUTOMATIONS_MAX_FIRINGS_PER_MINUTE": 2}
    auto = automation(bare_ws, reactive(["flow-run.state.failed"]))
    for second in (0, 1, 2):
        on_events([event(bare_ws, "flow-run.state.failed", seconds=second, id=f"r{second}")], at(second))
    assert Firing.objects.filter(automation=auto).count() == 2
    on_events([event(bare_ws, "flow-run.state.failed", seconds=70, id="later")], at(70))  # a minute on
    assert Firing.objects.filter(automation=auto).count() == 3
