"""Schedules created and edited in the dashboard: the form's controls become the API's definition,
checked by the API's serializer, saved through the actions layer; the preview shows the next fire
times as the person types, or what is wrong, naming the field."""

import pytest
from django.http import QueryDict

from runs.dashboard.schedule_forms import calendar_from_post
from runs.models import AuditEntry, FlowRun, Role, Schedule
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_admin(client, ws):
    client.force_login(factories.member(ws, role=Role.ADMIN))
    return client


def post_data(**fields):
    query = QueryDict(mutable=True)
    for key, value in fields.items():
        if isinstance(value, list):
            query.setlist(key, [str(v) for v in value])
        else:
            query[key] = str(value)
    return query


def test_calendar_controls_become_the_rule_the_api_takes():
    rule = calendar_from_post(post_data(
        cal_base="nth_weekday", cal_nth="-1", cal_weekday="FR", cal_country="us", cal_subdivision="ny",
        cal_months=[3, 6, 9, 12], cal_business_days="1", cal_exclude_dates="2026-12-24, 2026-12-31",
        cal_adjustment="previous_business_day", cal_times="09:00, 17:30"))
    assert rule == {
        "base": {"rule": "nth_weekday", "nth": -1, "weekday": "FR"},
        "holidays": {"country": "US", "subdivision": "NY"},
        "filters": [{"type": "months", "months": [3, 6, 9, 12]}, {"type": "business_days"},
                    {"type": "exclude_dates", "dates": ["2026-12-24", "2026-12-31"]}],
        "adjustment": "previous_business_day", "times": ["09:00", "17:30"]}
    window = calendar_from_post(post_data(cal_base="business_days", cal_window_start="09:00", cal_window_end="17:00",
                                          cal_window_every="30"))
    assert window["window"] == {"start": "09:00", "end": "17:00", "every_minutes": 30} and "times" not in window


def test_preview_shows_the_next_ten_fire_times_in_utc_and_the_zone(as_operator):
    answer = as_operator.post("/dashboard/schedules/preview/", {
        "kind": "calendar", "timezone": "Europe/Berlin", "cal_base": "last_business_day_of_month", "cal_times": "18:00",
        "dst_nonexistent": "shift", "dst_ambiguous": "once"})
    assert answer.status_code == 200
    times = answer.context["times"]
    assert len(times) == 10 and all(local.hour == 18 for _, local in times)
    assert all(local.weekday() < 5 for _, local in times)
    assert "Europe/Berlin" in answer.content.decode()


def test_preview_names_the_bad_field(as_operator):
    errors = dict(as_operator.post("/dashboard/schedules/preview/", {"kind": "cron", "cron": "61 * * * *"})
                  .context["errors"])
    assert "cron" in errors
    errors = dict(as_operator.post("/dashboard/schedules/preview/", {"kind": "interval", "interval_seconds": "x"})
                  .context["errors"])
    assert "interval_seconds" in errors
    errors = dict(as_operator.post("/dashboard/schedules/preview/", {"kind": "cron", "cron": "0 9 * * *",
                                                                      "timezone": "Mars/Olympus"}).context["errors"])
    assert "timezone" in errors


def test_an_admin_creates_a_calendar_schedule_and_its_runs_exist_at_once(as_admin, ws):
    flow = factories.flow(ws, name="month-end")
    queue = factories.work_queue(ws, name="finance")
    answer = as_admin.post("/dashboard/schedules/new/", post_data(
        flow=flow.pk, slug="close-books", description="Month-end close", kind="calendar", timezone="America/New_York",
        cal_base="last_business_day_of_month", cal_country="US", cal_times="17:00", dst_nonexistent="skip",
        dst_ambiguous="once", work_queue=queue.pk, parameters='{"ledger": "main"}', catchup_max_runs="0"))
    assert answer.status_code == 302, answer.content.decode()[:2000]
    schedule = Schedule.objects.get(flow=flow, slug="close-books")
    assert schedule.calendar["base"] == {"rule": "last_business_day_of_month"}
    assert schedule.calendar["holidays"] == {"country": "US"}
    assert (schedule.dst_nonexistent, schedule.work_queue, schedule.parameters) == ("skip", queue, {"ledger": "main"})
    assert FlowRun.objects.filter(schedule=schedule).count() == 10
    entry = AuditEntry.objects.get(action="schedule.create")
    assert entry.via == "dashboard"


def test_edit_shows_the_rule_as_controls_and_saves_changes_audited(as_admin, ws):
    flow = factories.flow(ws)
    schedule = factories.schedule(flow, kind="calendar", interval_seconds=None, calendar={
        "base": {"rule": "nth_weekday", "nth": -1, "weekday": "FR"}, "filters": [{"type": "months", "months": [3, 6]}],
        "times": ["09:00"]})
    page = as_admin.get(f"/dashboard/schedules/{schedule.pk}/edit/")
    assert page.context["v"]["cal_nth"] == -1 and page.context["v"]["cal_months"] == [3, 6]
    html = page.content.decode()
    assert '<option value="FR" selected>' in html and 'value="3" checked' in html
    answer = as_admin.post(f"/dashboard/schedules/{schedule.pk}/edit/", post_data(
        flow=flow.pk, slug=schedule.slug, kind="cron", cron="30 6 * * 1-5", timezone="UTC", dst_nonexistent="shift",
        dst_ambiguous="once", parameters="{}", catchup_max_runs="0"))
    assert answer.status_code == 302
    schedule.refresh_from_db()
    assert (schedule.kind, schedule.cron) == ("cron", "30 6 * * 1-5")
    assert AuditEntry.objects.filter(action="schedule.change", target_id=str(schedule.pk)).exists()


def test_bad_input_is_a_400_that_names_the_field_and_keeps_what_was_typed(as_admin, ws):
    flow = factories.flow(ws)
    factories.schedule(flow, slug="taken")
    answer = as_admin.post("/dashboard/schedules/new/", post_data(
        flow=flow.pk, slug="taken", kind="cron", cron="0 9 * * *", timezone="UTC", parameters="{}"))
    assert answer.status_code == 400 and ("slug", f"Flow {flow.name} already has a schedule 'taken'.") in \
        answer.context["errors"]
    answer = as_admin.post("/dashboard/schedules/new/", post_data(
        flow=flow.pk, slug="new-one", kind="cron", cron="0 9 * * *", timezone="UTC", parameters="{not json"))
    assert answer.status_code == 400 and answer.context["errors"][0][0] == "parameters"
    assert 'value="new-one"' in answer.content.decode()
    assert Schedule.objects.filter(slug="new-one").count() == 0


def test_operators_cannot_create_or_edit_and_are_told_the_role(as_operator, ws):
    flow = factories.flow(ws)
    schedule = factories.schedule(flow)
    refused = as_operator.get("/dashboard/schedules/new/")
    assert refused.status_code == 403 and "admin role" in refused.content.decode()
    assert as_operator.get(f"/dashboard/schedules/{schedule.pk}/edit/").status_code == 403
    assert "Edit<span" not in as_operator.get("/dashboard/schedules/").content.decode()


def test_a_flow_of_another_workspace_cannot_be_chosen(as_admin, ws, other_ws):
    factories.flow(ws)
    theirs = factories.flow(other_ws)
    answer = as_admin.post("/dashboard/schedules/new/", post_data(flow=theirs.pk, slug="x", kind="cron",
                                                                  cron="0 9 * * *", timezone="UTC"))
    assert answer.status_code == 400 and answer.context["errors"][0][0] == "flow"


def test_edit_pins_and_unpins_a_version(as_admin, ws):
    flow = factories.flow(ws)
    first = flow.register_version(entrypoint="tests.flows:noop", version="1")
    flow.register_version(entrypoint="tests.flows:noop", version="2")
    schedule = factories.schedule(flow, kind="cron", interval_seconds=None, cron="0 9 * * *")
    page = as_admin.get(f"/dashboard/schedules/{schedule.pk}/edit/").content.decode()
    assert "follow the latest" in page and f'value="{first.pk}"' in page
    fields = dict(flow=flow.pk, slug=schedule.slug, kind="cron", cron="0 9 * * *", timezone="UTC",
                  dst_nonexistent="shift", dst_ambiguous="once", parameters="{}", catchup_max_runs="0")
    assert as_admin.post(f"/dashboard/schedules/{schedule.pk}/edit/",
                         post_data(**fields, flow_version=first.pk)).status_code == 302
    schedule.refresh_from_db()
    assert schedule.flow_version_id == first.pk
    assert as_admin.post(f"/dashboard/schedules/{schedule.pk}/edit/",
                         post_data(**fields, flow_version="")).status_code == 302
    schedule.refresh_from_db()
    assert schedule.flow_version_id is None
