"""The scheduler service: the next runs of every active schedule, exactly once, never in the past."""

from datetime import timedelta

import pytest

from runs.models import Actor, FlowRun, Schedule, ScheduleKind, ScheduleStatus, State, StateChange
from runs.scheduling import (create_manual_run, delete_schedule, pause_schedule, reschedule_after_edit,
                             resume_schedule, schedule_future_runs)
from runs.scheduled_runs import ScheduledRunWriter
from services.scheduler import run_once
from tests import factories
from tests.scheduler.conftest import utc

NOW = utc(2026, 5, 4, 12, 0, 7)


def runs_of(schedule):
    return FlowRun.objects.filter(flow=schedule.flow, schedule_slug=schedule.slug, auto_scheduled=True)


def starts(queryset):
    return list(queryset.order_by("scheduled_start").values_list("scheduled_start", flat=True))


def test_every_active_schedule_gets_its_next_ten_runs_with_its_parameters_queue_and_latest_version(ws, flow):
    queue = factories.work_queue(ws, name="gpu")
    flow.register_version(entrypoint="etl:main", version="2")
    hourly = factories.schedule(flow, slug="hourly", interval_seconds=3600, parameters={"x": 1}, work_queue=queue)
    factories.schedule(flow, slug="paused", status=ScheduleStatus.PAUSED)
    summary = run_once(NOW)
    assert summary["runs_created"] == 10
    runs = list(runs_of(hourly).order_by("scheduled_start"))
    assert [r.scheduled_start for r in runs] == [utc(2026, 5, 4, 13) + timedelta(hours=i) for i in range(10)]
    assert {(r.state, r.parameters["x"], r.work_queue_id, r.flow_version.version, r.schedule_id) for r in runs} == {
        (State.SCHEDULED, 1, queue.pk, "2", hourly.pk)}
    assert not FlowRun.objects.filter(schedule_slug="paused").exists()


def test_runs_without_a_queue_go_to_the_default_queue(flow):
    s = factories.schedule(flow, slug="q")
    run_once(NOW)
    assert set(runs_of(s).values_list("work_queue__name", flat=True)) == {"default"}


def test_second_pass_creates_nothing(flow):
    factories.schedule(flow, slug="a", interval_seconds=60)
    factories.schedule(flow, slug="b", kind=ScheduleKind.CRON, cron="*/5 * * * *")
    assert run_once(NOW)["runs_created"] == 20
    assert run_once(NOW)["runs_created"] == 0
    assert run_once(NOW + timedelta(seconds=5))["runs_created"] == 0
    assert FlowRun.objects.count() == 20


def test_a_later_pass_tops_up_to_ten_and_never_creates_past_runs_after_downtime(flow):
    s = factories.schedule(flow, slug="m", interval_seconds=60, anchor=utc(2026, 1, 1))
    run_once(NOW)
    later = NOW + timedelta(hours=5)  # the service was down for five hours
    assert run_once(later)["runs_created"] == 10
    new = runs_of(s).filter(created=later)
    assert new.count() == 10 and not new.filter(scheduled_start__lte=later).exists()
    assert runs_of(s).filter(scheduled_start__gt=later).count() == 10


def test_catch_up_is_off_by_default_after_a_resume(flow):
    s = factories.schedule(flow, slug="c", interval_seconds=3600, anchor=utc(2026, 1, 1))
    run_once(NOW)
    pause_schedule(s, NOW)
    resume_schedule(s, NOW + timedelta(days=2))
    assert not runs_of(s).filter(scheduled_start__lte=NOW + timedelta(days=2)).exists()


def test_catch_up_creates_at_most_the_cap_of_the_newest_missed_runs_after_downtime(flow):
    s = factories.schedule(flow, slug="c", interval_seconds=3600, anchor=utc(2026, 1, 1), catchup_max_runs=3,
                           created=NOW - timedelta(days=30))
    run_once(NOW)  # runs up to 22:00 the same day exist
    later = NOW + timedelta(days=1)  # 2026-05-05 12:00:07; missed: 23:00 … 12:00
    assert run_once(later)["runs_created"] == 13
    past = runs_of(s).filter(scheduled_start__lte=later, created=later)
    assert starts(past) == [utc(2026, 5, 5, 10), utc(2026, 5, 5, 11), utc(2026, 5, 5, 12)]


def test_catch_up_never_reaches_back_before_the_schedule_existed(flow):
    s = factories.schedule(flow, slug="c", interval_seconds=3600, anchor=utc(2026, 1, 1), catchup_max_runs=50,
                           created=NOW - timedelta(hours=2, seconds=7))
    run_once(NOW)
    assert starts(runs_of(s).filter(scheduled_start__lte=NOW)) == [utc(2026, 5, 4, 11), utc(2026, 5, 4, 12)]


def test_catch_up_after_resume_fills_the_paused_gap_up_to_the_cap(flow):
    s = factories.schedule(flow, slug="c", interval_seconds=3600, anchor=utc(2026, 1, 1), catchup_max_runs=2,
                           created=NOW - timedelta(days=3))
    FlowRun.objects.create(workspace=flow.workspace, flow=flow, schedule=s, schedule_slug="c", auto_scheduled=True,
                           scheduled_start=utc(2026, 5, 4, 9), state=State.COMPLETED)
    assert resume_schedule(s, NOW) == 12
    assert starts(runs_of(s).filter(scheduled_start__lte=NOW, state=State.SCHEDULED)) == [utc(2026, 5, 4, 11),
                                                                                          utc(2026, 5, 4, 12)]


def test_only_newest_when_late_cancels_the_older_late_runs_with_a_reason(flow):
    s = factories.schedule(flow, slug="late", interval_seconds=600, only_newest_when_late=True)
    other = factories.schedule(flow, slug="keep-all", interval_seconds=600)
    for sched in (s, other):
        for minutes, state in ((40, State.LATE), (30, State.LATE), (20, State.SCHEDULED)):
            factories.flow_run(flow, state=state, schedule=sched, schedule_slug=sched.slug, auto_scheduled=True,
                               scheduled_start=NOW - timedelta(minutes=minutes))
    manual, _ = create_manual_run(flow, schedule=s, scheduled_start=NOW - timedelta(hours=1))
    summary = run_once(NOW)
    assert summary["late_runs_cancelled"] == 2
    overdue = runs_of(s).filter(scheduled_start__lte=NOW).order_by("scheduled_start")
    assert [r.state for r in overdue] == [State.CANCELLED, State.CANCELLED, State.SCHEDULED]
    change = StateChange.objects.filter(flow_run=overdue[0], to_state=State.CANCELLED).get()
    assert change.actor == Actor.SCHEDULER and "only the newest" in change.message
    assert set(runs_of(other).filter(scheduled_start__lte=NOW).values_list("state", flat=True)) == {
        State.LATE, State.SCHEDULED}
    manual.refresh_from_db()
    assert manual.state == State.SCHEDULED
    assert run_once(NOW)["late_runs_cancelled"] == 0


def test_pause_deletes_future_auto_scheduled_runs_only(flow):
    s = factories.schedule(flow, slug="p", interval_seconds=3600)
    run_once(NOW)
    started = runs_of(s).order_by("scheduled_start").first()
    FlowRun.objects.filter(pk=started.pk).update(state=State.RUNNING, start_time=NOW)
    manual, _ = create_manual_run(flow, schedule=s, scheduled_start=NOW + timedelta(hours=3))
    assert pause_schedule(s, NOW) == 9
    assert set(FlowRun.objects.values_list("pk", flat=True)) == {started.pk, manual.pk}
    assert run_once(NOW)["runs_created"] == 0


def test_a_pass_that_raced_a_pause_has_its_runs_removed_by_the_next_pass(flow):
    s = factories.schedule(flow, slug="p", interval_seconds=3600)
    schedule_future_runs([s], NOW)  # a pass that still saw it ACTIVE …
    Schedule.objects.filter(pk=s.pk).update(status=ScheduleStatus.PAUSED)  # … while the pause landed
    assert run_once(NOW)["paused_runs_deleted"] == 10
    assert not runs_of(s).exists()


def test_resume_recreates_the_future_runs_at_once(flow):
    s = factories.schedule(flow, slug="r", interval_seconds=3600)
    run_once(NOW)
    pause_schedule(s, NOW)
    assert resume_schedule(s, NOW + timedelta(minutes=1)) == 10
    assert runs_of(s).filter(scheduled_start__gt=NOW).count() == 10


def test_edit_replaces_non_matching_future_runs_and_keeps_matching_ones(flow):
    s = factories.schedule(flow, slug="e", interval_seconds=3600, anchor=utc(2026, 1, 1))
    run_once(NOW)
    kept = set(runs_of(s).filter(scheduled_start__lte=utc(2026, 5, 4, 17)).values_list("pk", flat=True))
    s.interval_seconds, s.parameters = 1800, {"edited": True}
    s.save()
    reschedule_after_edit(s, NOW)
    future = runs_of(s).filter(scheduled_start__gt=NOW)
    assert starts(future) == [utc(2026, 5, 4, 12, 30) + timedelta(minutes=30 * i) for i in range(10)]
    on_the_hour = set(future.filter(scheduled_start__minute=0).values_list("pk", flat=True))
    assert on_the_hour == kept  # 13:00 … 17:00 survive the edit
    assert {r.parameters.get("edited") for r in future} == {True}


def test_renaming_a_schedule_drops_the_runs_of_its_old_slug(flow):
    s = factories.schedule(flow, slug="old", interval_seconds=3600)
    run_once(NOW)
    s.slug = "new"
    s.save()
    reschedule_after_edit(s, NOW)
    assert FlowRun.objects.filter(schedule_slug="old").count() == 0
    assert runs_of(s).count() == 10


def test_manual_runs_coexist_with_scheduled_ones_at_the_same_time(flow):
    user = factories.user()
    s = factories.schedule(flow, slug="m", interval_seconds=3600, anchor=utc(2026, 1, 1))
    run, created = create_manual_run(flow, user=user, schedule=s, scheduled_start=utc(2026, 5, 4, 13))
    run_once(NOW)
    at_one = FlowRun.objects.filter(scheduled_start=utc(2026, 5, 4, 13))
    assert at_one.count() == 2 and at_one.get(auto_scheduled=False).created_by == user


def test_re_creating_a_schedule_with_the_same_slug_creates_no_duplicate(flow):
    s = factories.schedule(flow, slug="same", interval_seconds=3600, anchor=utc(2026, 1, 1))
    run_once(NOW)
    Schedule.objects.filter(pk=s.pk).delete()  # deleted without its runs, e.g. straight from the database
    again = factories.schedule(flow, slug="same", interval_seconds=3600, anchor=utc(2026, 1, 1))
    reschedule_after_edit(again, NOW)
    run_once(NOW)
    assert runs_of(again).count() == 10
    assert set(runs_of(again).values_list("schedule_id", flat=True)) == {again.pk}


def test_re_registering_the_same_schedules_creates_no_duplicate(flow):
    for _ in range(3):
        s, _ = Schedule.objects.update_or_create(flow=flow, slug="deploy", defaults={
            "kind": ScheduleKind.CRON, "cron": "0 * * * *"})
        reschedule_after_edit(s, NOW)
        run_once(NOW)
    assert runs_of(s).count() == 10


def test_deleting_a_schedule_deletes_its_future_runs_and_keeps_history(flow):
    s = factories.schedule(flow, slug="d", interval_seconds=3600)
    run_once(NOW)
    done = factories.flow_run(flow, state=State.COMPLETED, schedule=s, schedule_slug="d", auto_scheduled=True,
                              scheduled_start=NOW - timedelta(hours=1))
    assert delete_schedule(s, NOW) == 10
    assert list(FlowRun.objects.values_list("pk", flat=True)) == [done.pk]


@pytest.mark.parametrize("n", [3, 30])
def test_one_pass_takes_a_fixed_number_of_queries_whatever_the_number_of_schedules(
        ws, django_assert_max_num_queries, n):
    flows = [factories.flow(ws) for _ in range(n)]
    for i, f in enumerate(flows):
        factories.schedule(f, slug="s", interval_seconds=60 * (i + 1), only_newest_when_late=bool(i % 2),
                           catchup_max_runs=i % 3)
    with django_assert_max_num_queries(15):
        assert run_once(NOW)["runs_created"] >= 10 * n
    with django_assert_max_num_queries(7):
        assert run_once(NOW)["runs_created"] == 0


def test_a_pass_that_raced_an_edit_has_its_stale_runs_replaced_by_the_next_pass(flow):
    s = factories.schedule(flow, slug="e", interval_seconds=3600, anchor=utc(2026, 1, 1))
    before_edit = Schedule.objects.get(pk=s.pk)
    s.interval_seconds = 1800
    s.save()
    reschedule_after_edit(s, NOW)  # the edit's own request …
    # … and a pass that read the old definition before the edit, inserting after it.
    writer = ScheduledRunWriter(NOW)
    writer.add(before_edit, workspace_id=flow.workspace_id, flow_version_id=None, work_queue_id=None,
               times=before_edit.next_fire_times(NOW, 10))
    assert writer.insert() == 5
    summary = run_once(NOW)
    assert summary["stale_runs_deleted"] == 5  # 18:00 … 22:00 are not half-hourly times of the next ten
    assert starts(runs_of(s).filter(scheduled_start__gt=NOW)) == [
        utc(2026, 5, 4, 12, 30) + timedelta(minutes=30 * i) for i in range(10)]


def test_a_schedule_saved_before_the_interval_limits_makes_no_runs_and_breaks_no_pass(db):
    """Rows written before intervals were capped (or by SQL) must not crash the scheduler."""
    from datetime import datetime, timezone as dt_timezone

    from django.utils import timezone

    from runs.scheduling import schedule_future_runs

    flow = factories.flow(factories.workspace())
    huge = Schedule.objects.create(flow=flow, slug="huge", kind="interval", interval_seconds=10**18)
    late = Schedule.objects.create(flow=flow, slug="late", kind="interval", interval_seconds=3600,
                                   anchor=datetime(9999, 12, 31, 20, tzinfo=dt_timezone.utc))
    fine = Schedule.objects.create(flow=flow, slug="fine", kind="interval", interval_seconds=3600)
    schedule_future_runs([huge, late, fine], timezone.now())
    assert FlowRun.objects.filter(schedule__in=[huge, late]).count() == 0
    assert FlowRun.objects.filter(schedule=fine).count() == 10
