"""The runs list: filters saved in the URL, counts per state, keyset pages, and cancel / retry /
mark failed for one run or many after a confirmation that says how many."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Actor, FlowRun, Role, State, StateChange
from runs.dashboard import runs_list
from tests import factories

pytestmark = pytest.mark.django_db


def run_names(page):
    return [run.name for run in page.context["runs"]]


def test_filters_combine_and_are_kept_in_the_url(as_operator, ws):
    now = timezone.now()
    etl, report = factories.flow(ws, name="etl"), factories.flow(ws, name="report")
    queue = factories.work_queue(ws, name="gpu")
    agent = factories.agent(ws, name="box-1")
    schedule = factories.schedule(etl)
    factories.flow_run(etl, State.FAILED, name="etl-failed", scheduled_start=now - timedelta(hours=2),
                       work_queue=queue, agent=agent, schedule=schedule)
    factories.flow_run(etl, State.COMPLETED, name="etl-ok", scheduled_start=now - timedelta(hours=1), work_queue=queue)
    factories.flow_run(report, State.FAILED, name="report-failed", scheduled_start=now - timedelta(hours=3),
                       state_message="disk full on box-2")
    factories.flow_run(etl, State.FAILED, name="etl-old", scheduled_start=now - timedelta(days=3))

    assert run_names(as_operator.get(f"/dashboard/runs/?state=FAILED&flow={etl.pk}")) == ["etl-failed", "etl-old"]
    since = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    page = as_operator.get(f"/dashboard/runs/?state=FAILED&since={since}")
    assert run_names(page) == ["etl-failed", "report-failed"]
    assert f'value="{since}"' in page.content.decode()  # the form shows what the URL says
    assert run_names(as_operator.get(f"/dashboard/runs/?queue={queue.pk}")) == ["etl-ok", "etl-failed"]
    assert run_names(as_operator.get(f"/dashboard/runs/?agent={agent.pk}&schedule={schedule.pk}")) == ["etl-failed"]
    assert run_names(as_operator.get("/dashboard/runs/?q=disk+full")) == ["report-failed"]
    assert run_names(as_operator.get("/dashboard/runs/?q=REPORT")) == ["report-failed"]
    one = FlowRun.objects.get(name="etl-ok")
    assert run_names(as_operator.get(f"/dashboard/runs/?q={one.pk}")) == ["etl-ok"]


def test_counts_per_state_follow_the_other_filters_and_link_to_each_state(as_operator, ws):
    etl, other = factories.flow(ws, name="etl"), factories.flow(ws, name="other")
    for state in (State.FAILED, State.FAILED, State.COMPLETED, State.SCHEDULED):
        factories.flow_run(etl, state)
    factories.flow_run(other, State.FAILED)
    page = as_operator.get(f"/dashboard/runs/?flow={etl.pk}")
    counts = {link["state"]: link["count"] for link in page.context["state_links"]}
    assert (counts["FAILED"], counts["COMPLETED"], counts["SCHEDULED"], counts["RUNNING"]) == (2, 1, 1, 0)
    failed_link = next(link for link in page.context["state_links"] if link["state"] == "FAILED")
    assert f"flow={etl.pk}" in failed_link["query"] and "state=FAILED" in failed_link["query"]
    assert page.context["total"] == 4


def test_counts_stop_at_the_cap_and_say_so(as_operator, ws, monkeypatch):
    monkeypatch.setattr(runs_list, "COUNT_CAP", 3)
    flow = factories.flow(ws)
    for _ in range(5):
        factories.flow_run(flow, State.FAILED)
    factories.flow_run(flow, State.COMPLETED)
    page = as_operator.get("/dashboard/runs/")
    failed = next(link for link in page.context["state_links"] if link["state"] == "FAILED")
    assert (failed["count"], failed["more"]) == (3, True)
    assert "3+</strong>" in page.content.decode() and "counts stop at 3 a state" in page.content.decode()


def test_text_search_reads_only_the_newest_runs_of_the_other_filters(as_operator, ws, monkeypatch):
    monkeypatch.setattr(runs_list, "TEXT_SEARCH_SCOPE", 2)
    flow = factories.flow(ws)
    now = timezone.now()
    for hours, name in ((1, "needle-new"), (2, "hay"), (3, "needle-old")):
        factories.flow_run(flow, name=name, scheduled_start=now - timedelta(hours=hours))
    page = as_operator.get("/dashboard/runs/?q=needle")
    assert run_names(page) == ["needle-new"]
    assert "reads the newest 2 runs" in page.content.decode()
    since = (now - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M")
    until = (now - timedelta(minutes=150)).strftime("%Y-%m-%dT%H:%M")
    assert run_names(as_operator.get(f"/dashboard/runs/?q=needle&since={since}&until={until}")) == ["needle-old"]


def test_bad_filters_say_which_field_and_still_show_the_page(as_operator, ws):
    factories.flow_run(factories.flow(ws), State.FAILED, name="still-here")
    page = as_operator.get("/dashboard/runs/?since=yesterday&flow=abc&state=BROKEN")
    assert page.status_code == 400
    assert set(page.context["errors"]) == {"since", "flow", "state"}
    assert run_names(page) == ["still-here"]
    assert "2026-12-07T08:30" in page.content.decode()  # the format it wants


def test_keyset_pages_walk_every_run_once_even_with_equal_due_times(as_operator, ws, monkeypatch):
    monkeypatch.setattr(runs_list, "PAGE_SIZE", 3)
    flow = factories.flow(ws)
    moment = timezone.now().replace(microsecond=0)
    made = {str(factories.flow_run(flow, scheduled_start=moment - timedelta(minutes=i // 3)).pk) for i in range(8)}
    seen, url = [], "/dashboard/runs/"
    while url:
        page = as_operator.get(url)
        seen += [str(run.pk) for run in page.context["runs"]]
        url = f"/dashboard/runs/?{page.context['next_query']}" if page.context["next_query"] else None
    assert len(seen) == 8 and set(seen) == made
    assert as_operator.get("/dashboard/runs/?cursor=%%%").context["bad_cursor"]


def test_the_list_costs_the_same_queries_for_10_or_200_runs(as_operator, ws, django_assert_max_num_queries):
    flow = factories.flow(ws)
    queue, agent = factories.work_queue(ws), factories.agent(ws)
    FlowRun.objects.bulk_create([FlowRun(workspace=ws, flow=flow, work_queue=queue, agent=agent, name=f"r{i}")
                                 for i in range(200)])
    # Session and roles, the page of runs, one capped count per state (10), the filters' choices.
    with django_assert_max_num_queries(22):
        page = as_operator.get("/dashboard/runs/")
    assert len(page.context["runs"]) == runs_list.PAGE_SIZE


def test_a_viewer_sees_runs_of_their_workspace_only(as_viewer, ws, other_ws):
    factories.flow_run(factories.flow(ws), name="mine")
    factories.flow_run(factories.flow(other_ws), name="theirs")
    assert run_names(as_viewer.get("/dashboard/runs/")) == ["mine"]


def confirm_then_do(client, action, runs, next_url="/dashboard/runs/?state=FAILED", before_yes=None):
    ids = [str(run.pk) for run in runs]
    confirm = client.post("/dashboard/runs/act/", {"action": action, "run": ids, "next": next_url})
    assert confirm.status_code == 200
    if before_yes:
        before_yes(confirm)
    done = client.post("/dashboard/runs/act/", {"action": action, "run": confirm.context["ids"],
                                                "confirmed": "yes", "next": next_url})
    assert done.status_code == 302 and done["Location"] == next_url
    return confirm, done


def test_bulk_cancel_confirms_how_many_then_cancels_and_counts_what_it_left(as_operator, ws):
    flow = factories.flow(ws)
    waiting = [factories.flow_run(flow, State.SCHEDULED) for _ in range(50)]
    running = factories.flow_run(flow, State.RUNNING)
    finished = factories.flow_run(flow, State.COMPLETED)

    def nothing_moved_yet(confirm):
        assert "Cancel 52 runs?" in confirm.content.decode()
        assert FlowRun.objects.filter(state=State.SCHEDULED).count() == 50

    confirm_then_do(as_operator, "cancel", [*waiting, running, finished], before_yes=nothing_moved_yet)
    assert FlowRun.objects.filter(state=State.CANCELLED).count() == 50
    assert FlowRun.objects.get(pk=running.pk).state == State.CANCELLING
    assert FlowRun.objects.get(pk=finished.pk).state == State.COMPLETED
    shown = as_operator.get("/dashboard/runs/").content.decode()
    assert "Cancelled 50 runs; asked 1 running run to stop; left 1 alone" in shown
    assert StateChange.objects.filter(to_state=State.CANCELLED, actor=Actor.USER).count() == 50


def test_retry_from_the_run_page_schedules_a_new_attempt(as_operator, ws):
    run = factories.flow_run(factories.flow(ws), State.FAILED, scheduled_start=timezone.now() - timedelta(days=1))
    page = as_operator.get(f"/dashboard/runs/{run.pk}/").content.decode()
    assert 'value="retry"' in page and 'value="cancel"' not in page
    before = FlowRun.objects.get(pk=run.pk).token_generation
    confirm_then_do(as_operator, "retry", [run], next_url=f"/dashboard/runs/{run.pk}/")
    run.refresh_from_db()
    assert run.state == State.SCHEDULED and run.end_time is None and run.token_generation == before + 1
    assert run.scheduled_start > timezone.now() - timedelta(minutes=1)
    assert StateChange.objects.filter(flow_run=run, from_state=State.FAILED, to_state=State.SCHEDULED).exists()


def test_mark_failed_moves_only_unfinished_runs(as_operator, ws):
    flow = factories.flow(ws)
    late, done = factories.flow_run(flow, State.LATE), factories.flow_run(flow, State.COMPLETED)
    confirm_then_do(as_operator, "mark-failed", [late, done])
    assert FlowRun.objects.get(pk=late.pk).state == State.FAILED
    assert FlowRun.objects.get(pk=done.pk).state == State.COMPLETED


def test_a_viewer_gets_no_buttons_and_a_403_that_names_the_role(as_viewer, ws):
    run = factories.flow_run(factories.flow(ws), State.FAILED)
    assert 'value="retry"' not in as_viewer.get(f"/dashboard/runs/{run.pk}/").content.decode()
    refused = as_viewer.post("/dashboard/runs/act/", {"action": "retry", "run": [str(run.pk)], "confirmed": "yes"})
    assert refused.status_code == 403 and "needs the operator role" in refused.content.decode()
    assert FlowRun.objects.get(pk=run.pk).state == State.FAILED


def test_runs_of_a_workspace_where_the_person_only_reads_are_left_alone(client, ws, other_ws):
    person = factories.member(ws, role=Role.OPERATOR)
    from runs.models import Membership
    Membership.objects.create(user=person, workspace=other_ws, role=Role.VIEWER)
    client.force_login(person)
    mine = factories.flow_run(factories.flow(ws), State.SCHEDULED)
    theirs = factories.flow_run(factories.flow(other_ws), State.SCHEDULED)
    confirm, _ = confirm_then_do(client, "cancel", [mine, theirs])
    assert confirm.context["count"] == 1 and confirm.context["not_allowed"] == 1
    assert FlowRun.objects.get(pk=mine.pk).state == State.CANCELLED
    assert FlowRun.objects.get(pk=theirs.pk).state == State.SCHEDULED


def test_hand_made_posts_get_clear_answers(as_operator, ws):
    run = factories.flow_run(factories.flow(ws), State.FAILED)
    assert as_operator.post("/dashboard/runs/act/", {"action": "explode", "run": [str(run.pk)]}).status_code == 400
    assert as_operator.post("/dashboard/runs/act/", {"action": "retry", "run": ["not-a-uuid"]}).status_code == 400
    too_many = as_operator.post("/dashboard/runs/act/", {"action": "retry", "run": [str(run.pk)] * 501})
    assert too_many.status_code == 400 and "at most 500" in too_many.content.decode()
    nothing = as_operator.post("/dashboard/runs/act/", {"action": "retry", "next": "https://evil.example/"})
    assert nothing.status_code == 302 and nothing["Location"] == "/dashboard/runs/"  # never off-site
    assert re.search("No run was selected", as_operator.get("/dashboard/runs/").content.decode())
