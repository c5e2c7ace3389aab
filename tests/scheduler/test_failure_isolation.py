"""One bad schedule never stops the scheduler, a page or a save for the others.

"Bad rows" were saved before validation refused them (or written by SQL): they are created here
with `Schedule.objects.create`, which skips validation. Whatever they do, the scheduler pass
still makes every other schedule's runs, the pass is a success in Towel's ledger, the bad
schedule is named in a log line and a `schedule.failed` event, and the pages that show it answer
200. A save (or resume) whose rescheduling fails leaves nothing behind: a 400, never half a change.
"""

import logging
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError

from events.models import Event
from runs.models import FlowRun, Role, Schedule, ScheduleKind, ScheduleStatus
from services import towel
from services.models import ServicePass
from services.scheduler import run_once
from tests import factories
from tests.scheduler.conftest import returns_within, utc

pytestmark = pytest.mark.usefixtures("budget")

NOW = utc(2026, 5, 4, 12, 0, 7)
QUICKLY = 5  # seconds; the budget is 1 s

BAD_ROWS = [
    pytest.param({"kind": ScheduleKind.CRON, "cron": "0 0 31 2 *"}, id="cron-february-31"),
    pytest.param({"kind": ScheduleKind.RRULE, "rrule": "RRULE:FREQ=SECONDLY;BYSETPOS=2"}, id="rrule-hangs"),
    pytest.param({"kind": ScheduleKind.RRULE,
                  "rrule": "DTSTART:00010101T000000\nRRULE:FREQ=SECONDLY;COUNT=99999999999"}, id="rrule-count-from-year-1"),
    pytest.param({"kind": ScheduleKind.RRULE, "rrule": "RRULE:FREQ=MINUTELY;INTERVAL=120;BYHOUR=1"},
                 id="rrule-raises-while-evaluated"),
    pytest.param({"kind": ScheduleKind.CALENDAR, "calendar": {}}, id="calendar-empty"),
    pytest.param({"kind": ScheduleKind.CALENDAR, "calendar": {"base": {"rule": "every_day"}, "times": ["25:00"]}},
                 id="calendar-bad-time"),
    pytest.param({"kind": ScheduleKind.CRON, "cron": "not a cron"}, id="cron-garbage"),
    pytest.param({"kind": "weekly"}, id="unknown-kind"),
]


@pytest.fixture
def flow(ws):
    return factories.flow(ws, name="etl")


def bad_schedule(flow, fields, slug="bad", **extra):
    return Schedule.objects.create(flow=flow, slug=slug, **fields, **extra)  # no validation: a legacy row


def runs_of(schedule):
    return FlowRun.objects.filter(flow=schedule.flow, schedule_slug=schedule.slug, auto_scheduled=True)


@pytest.mark.parametrize("fields", BAD_ROWS)
def test_a_pass_with_a_bad_schedule_makes_the_runs_of_every_other_and_names_the_bad_one(flow, ws, fields, caplog,
                                                                                       flush_events):
    before = factories.schedule(flow, slug="a-hourly", interval_seconds=3600)
    bad = bad_schedule(flow, fields)
    after = factories.schedule(factories.flow(factories.workspace(), name="other"), slug="z-cron",
                               kind=ScheduleKind.CRON, cron="*/5 * * * *")
    with caplog.at_level(logging.WARNING, logger="services.scheduler"), returns_within(QUICKLY):
        summary = towel.run("scheduler", NOW)
    assert summary["runs_created"] == 20, summary
    assert runs_of(before).count() == 10 and runs_of(after).count() == 10 and not runs_of(bad).exists()
    assert summary["failed_schedules"] == [bad.pk]
    ledger = ServicePass.objects.get(service="scheduler")
    assert ledger.ok and ledger.error == ""
    flush_events()
    event = Event.objects.get(name="schedule.failed")
    assert event.workspace_id == ws.pk and event.resource == {"kind": "schedule", "id": str(bad.pk), "name": "etl/bad"}
    assert event.payload["service"] == "scheduler" and event.payload["error"]
    assert not Event.objects.filter(name="service.failed").exists()
    assert any(f"etl/bad (id {bad.pk})" in r.getMessage() for r in caplog.records)


def test_a_bad_schedule_is_logged_every_pass_but_gets_one_event_an_hour(flow, caplog, flush_events):
    bad = bad_schedule(flow, {"kind": ScheduleKind.CRON, "cron": "0 0 31 2 *"})
    with caplog.at_level(logging.WARNING, logger="services.scheduler"):
        for seconds in (0, 10, 20, 3599):
            assert run_once(NOW + timedelta(seconds=seconds))["failed_schedules"] == [bad.pk]
            flush_events()
        run_once(NOW + timedelta(hours=1, seconds=1))
        flush_events()
    assert Event.objects.filter(name="schedule.failed").count() == 2
    assert sum(f"(id {bad.pk})" in r.getMessage() for r in caplog.records) == 5


@pytest.mark.parametrize("n", [3, 30])
def test_a_pass_with_bad_schedules_takes_a_fixed_number_of_queries(ws, django_assert_max_num_queries, n):
    flows = [factories.flow(ws) for _ in range(n)]
    for i, f in enumerate(flows):
        factories.schedule(f, slug="good", interval_seconds=60 * (i + 1), catchup_max_runs=i % 3)
        bad_schedule(f, {"kind": ScheduleKind.CRON, "cron": "0 0 31 2 *"}, slug="bad")
    # As a pass without bad schedules (15 and 7), plus reading recent events and writing new ones;
    # the second pass also reads the versions and queues for the bad schedules, still short of runs.
    with django_assert_max_num_queries(17):
        summary = run_once(NOW)
    assert summary["runs_created"] >= 10 * n and len(summary["failed_schedules"]) == n
    with django_assert_max_num_queries(11):
        assert run_once(NOW)["runs_created"] == 0


def test_a_bad_schedule_edited_recently_breaks_no_pass(flow):
    """The pass re-checks recent edits against the current definition (a race with the edit's own
    request); a definition that cannot be evaluated keeps its runs and is named, the rest goes on."""
    good = factories.schedule(flow, slug="good", interval_seconds=3600)
    bad = bad_schedule(flow, {"kind": ScheduleKind.RRULE, "rrule": "RRULE:FREQ=SECONDLY;BYSETPOS=2"})
    Schedule.objects.filter(pk__in=[good.pk, bad.pk]).update(updated=NOW)
    with returns_within(QUICKLY):
        summary = run_once(NOW)
    assert summary["failed_schedules"] == [bad.pk] and runs_of(good).count() == 10


# --- pages that show a bad schedule ------------------------------------------------------------------

@pytest.mark.parametrize("fields", BAD_ROWS)
def test_the_api_shows_a_bad_schedule_with_no_next_runs_and_why(api, key_for, prefix, flow, fields):
    bad = bad_schedule(flow, fields)
    client = api.as_key(key_for(Role.VIEWER))
    with returns_within(QUICKLY):
        detail = client.get(f"{prefix}/schedules/{bad.pk}/")
        listed = client.get(f"{prefix}/schedules/")
    assert detail.status_code == 200, detail.content
    assert detail.json()["next_runs"] == [] and detail.json()["next_runs_error"]
    assert listed.status_code == 200, listed.content


@pytest.mark.parametrize("fields", BAD_ROWS)
def test_the_dashboard_lists_a_bad_schedule_marked_beside_good_ones(client, ws, flow, fields):
    from runs.scheduling import schedule_future_runs

    client.force_login(factories.member(ws, role=Role.OPERATOR))
    good = factories.schedule(flow, slug="good", interval_seconds=3600)
    schedule_future_runs([good], NOW)
    bad = bad_schedule(flow, fields)
    with returns_within(QUICKLY):
        page = client.get("/dashboard/schedules/")
    assert page.status_code == 200
    rows = {row["schedule"].pk: row for row in page.context["rows"]}
    assert len(rows[good.pk]["next_times"]) == 3
    assert rows[bad.pk]["next_times"] == [] and rows[bad.pk]["next_times_error"]
    assert "Cannot compute its fire times" in page.content.decode()


def test_the_dashboard_page_stays_bounded_with_many_bad_schedules(client, ws, flow):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    for i in range(6):
        bad_schedule(flow, {"kind": ScheduleKind.RRULE, "rrule": "RRULE:FREQ=SECONDLY;BYSETPOS=2"}, slug=f"bad-{i}")
    with returns_within(QUICKLY):
        page = client.get("/dashboard/schedules/")
    assert page.status_code == 200 and all(row["next_times_error"] for row in page.context["rows"])


@pytest.mark.parametrize("fields", BAD_ROWS)
def test_the_admin_lists_and_opens_a_bad_schedule(admin_client, flow, fields):
    bad = bad_schedule(flow, fields)
    with returns_within(QUICKLY):
        listed = admin_client.get("/admin/runs/schedule/")
        opened = admin_client.get(f"/admin/runs/schedule/{bad.pk}/change/")
    assert listed.status_code == 200 and opened.status_code == 200
    assert "Cannot compute" in opened.content.decode()


# --- a save and its rescheduling are one transaction -------------------------------------------------

def failing_rescheduling(monkeypatch):
    """The rescheduling of the next save fails (as a computation past its budget would)."""
    import runs.scheduling

    def fail(*args, **kwargs):
        raise ValidationError({"cron": ["Too expensive to evaluate: (simulated)"]})

    monkeypatch.setattr(runs.scheduling, "schedule_future_runs", fail)


def test_a_create_whose_rescheduling_fails_is_a_400_and_saves_nothing(api, key_for, prefix, flow, monkeypatch):
    failing_rescheduling(monkeypatch)
    body = {"flow": "etl", "slug": "s", "kind": "cron", "cron": "0 * * * *"}
    response = api.as_key(key_for(Role.ADMIN)).post(f"{prefix}/schedules/", body, format="json")
    assert response.status_code == 400 and "cron" in response.json()["error"]["fields"], response.content
    assert not Schedule.objects.exists() and not FlowRun.objects.exists()


def test_an_edit_whose_rescheduling_fails_is_a_400_and_changes_nothing(api, key_for, prefix, flow, monkeypatch):
    from runs.scheduling import reschedule_after_edit

    schedule = factories.schedule(flow, slug="s", kind=ScheduleKind.CRON, cron="0 * * * *")
    reschedule_after_edit(schedule)
    kept = set(FlowRun.objects.values_list("pk", flat=True))
    failing_rescheduling(monkeypatch)
    response = api.as_key(key_for(Role.ADMIN)).patch(f"{prefix}/schedules/{schedule.pk}/", {"cron": "30 * * * *"},
                                                     format="json")
    assert response.status_code == 400, response.content
    schedule.refresh_from_db()
    assert schedule.cron == "0 * * * *" and set(FlowRun.objects.values_list("pk", flat=True)) == kept


def test_an_admin_save_whose_rescheduling_fails_saves_nothing_and_says_why(admin_client, flow, monkeypatch):
    failing_rescheduling(monkeypatch)
    page = admin_client.post("/admin/runs/schedule/add/", {
        "flow": flow.pk, "slug": "s", "kind": "cron", "cron": "0 * * * *", "calendar": "{}", "timezone": "UTC",
        "dst_nonexistent": "shift", "dst_ambiguous": "once", "status": "ACTIVE", "parameters": "{}",
        "catchup_max_runs": 0,
    }, follow=True)
    assert page.status_code == 200
    assert not Schedule.objects.exists() and not FlowRun.objects.exists()
    assert "Not saved" in page.content.decode() and "simulated" in page.content.decode()


@pytest.mark.parametrize("fields", BAD_ROWS[:3])
def test_resuming_a_bad_schedule_is_a_400_naming_the_field_and_it_stays_paused(api, key_for, prefix, flow, fields):
    bad = bad_schedule(flow, fields, status=ScheduleStatus.PAUSED)
    with returns_within(QUICKLY):
        response = api.as_key(key_for(Role.OPERATOR)).post(f"{prefix}/schedules/{bad.pk}/resume/")
    assert response.status_code == 400, response.content
    assert {"cron", "rrule"} & set(response.json()["error"]["fields"])
    bad.refresh_from_db()
    assert bad.status == ScheduleStatus.PAUSED and not FlowRun.objects.exists()


def test_resuming_a_bad_schedule_from_the_dashboard_leaves_it_paused_and_says_why(client, ws, flow):
    client.force_login(factories.member(ws, role=Role.OPERATOR))
    bad = bad_schedule(flow, {"kind": ScheduleKind.CRON, "cron": "0 0 31 2 *"}, status=ScheduleStatus.PAUSED)
    row = client.post(f"/dashboard/schedules/{bad.pk}/resume/", HTTP_HX_REQUEST="true")
    assert row.status_code == 200
    assert "never fires" in row.content.decode() and 'aria-checked="false"' in row.content.decode()
    bad.refresh_from_db()
    assert bad.status == ScheduleStatus.PAUSED


def test_resuming_schedules_in_the_admin_resumes_the_good_ones_and_names_the_bad(admin_client, flow):
    good = factories.schedule(flow, slug="good", status=ScheduleStatus.PAUSED)
    bad = bad_schedule(flow, {"kind": ScheduleKind.CRON, "cron": "0 0 31 2 *"}, status=ScheduleStatus.PAUSED)
    page = admin_client.post("/admin/runs/schedule/", {"action": "resume", "_selected_action": [good.pk, bad.pk]},
                             follow=True)
    assert page.status_code == 200
    good.refresh_from_db(), bad.refresh_from_db()
    assert good.status == ScheduleStatus.ACTIVE and runs_of(good).count() == 10
    assert bad.status == ScheduleStatus.PAUSED and "etl/bad" in page.content.decode()
