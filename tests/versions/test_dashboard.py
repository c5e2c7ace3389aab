"""The dashboard's flows list, flow page, version comparison and pin menu."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from runs.models import AuditEntry, Role, Schedule
from tests import factories

from .conftest import versions_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_viewer(client, ws):
    client.force_login(factories.member(ws, role=Role.VIEWER))
    return client


@pytest.fixture
def as_operator(client, ws):
    client.force_login(factories.member(ws, role=Role.OPERATOR))
    return client


def test_the_flows_list_shows_each_flow_with_its_latest_version_and_counts(as_viewer, flow, ws, other_ws):
    factories.schedule(flow)
    factories.flow(other_ws, name="someone-elses")
    page = as_viewer.get("/dashboard/flows/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'href="/dashboard/flows/{flow.pk}/"' in html and "someone-elses" not in html
    row = html[html.index("nightly-etl"):]
    row = row[:row.index("</tr>")]
    assert "<td>3</td>" in row and "<td>1</td>" in row and f"#{flow.latest_version.pk}" in row


def test_the_flow_page_lists_schedules_with_what_they_run_and_versions_newest_first(as_viewer, flow):
    v = versions_of(flow)
    factories.schedule(flow, slug="pinned", flow_version=v["1"])
    factories.schedule(flow, slug="following")
    html = as_viewer.get(f"/dashboard/flows/{flow.pk}/").content.decode()
    pinned = html[html.index('<th scope="row">pinned'):]
    assert "Pinned</strong> to 1" in pinned[:pinned.index("</tr>")] and "archived" in pinned[:pinned.index("</tr>")]
    following = html[html.index('<th scope="row">following'):]
    assert "Follows the latest" in following[:following.index("</tr>")]
    assert html.index(f'id="version-{v["3"].pk}"') < html.index(f'id="version-{v["2"].pk}"') \
        < html.index(f'id="version-{v["1"].pk}"')
    assert f'?base={v["2"].pk}&amp;head={v["3"].pk}' in html  # "what changed" from the one before
    assert "LATEST" in html and "ARCHIVED" in html
    # A viewer reads; the pin menu is for operators.
    assert 'name="flow_version"' not in html and "operators change this" in html


def test_versions_come_in_pages(as_viewer, ws):
    flow = factories.flow(ws)
    for i in range(2, 26):
        flow.register_version(entrypoint="m:f", version=str(i))
    first = as_viewer.get(f"/dashboard/flows/{flow.pk}/").content.decode()
    assert first.count('id="version-') == 20 and "Older versions" in first and "(25, newest first)" in first
    assert as_viewer.get(f"/dashboard/flows/{flow.pk}/?page={10**30}").status_code == 200
    second = as_viewer.get(f"/dashboard/flows/{flow.pk}/?page=2").content.decode()
    assert second.count('id="version-') == 5 and "Newer versions" in second and "Older versions" not in second
    # The last row of page 1 compares with the first row of page 2.
    oldest_on_first = flow.versions.order_by("-created", "-id")[19]
    before = flow.versions.order_by("-created", "-id")[20]
    assert f"?base={before.pk}&amp;head={oldest_on_first.pk}" in first


def test_the_comparison_shows_each_change_in_words(as_viewer, flow):
    v = versions_of(flow)
    page = as_viewer.get(f"/dashboard/flows/{flow.pk}/compare/", {"base": v["2"].pk, "head": v["3"].pk})
    assert page.status_code == 200
    html = page.content.decode()
    assert "<del><code>etl.flows:nightly</code></del>" in html and "<ins><code>etl.nightly:run</code></ins>" in html
    # Parameters as JSON with their types; the kind of change is a word, not only a colour.
    assert '<ins><code>false</code></ins> <span class="muted">(boolean)</span>' in html
    assert "<del><code>&quot;yesterday&quot;</code></del>" in html and "integer, type changed" in html
    assert html.count(">Added</span>") == 3  # full, TZ, DB_PASSWORD
    assert html.count(">Changed</span>") == 2  # entrypoint, day
    assert "<caption" in html and 'scope="col"' in html


def test_identical_versions_say_there_is_no_difference(as_viewer, flow):
    v3 = versions_of(flow)["3"].pk
    html = as_viewer.get(f"/dashboard/flows/{flow.pk}/compare/", {"base": v3, "head": v3}).content.decode()
    assert "No difference" in html


@pytest.mark.parametrize("which", ["other-flow", "unknown", "missing", "garbage"])
def test_a_comparison_that_cannot_be_made_is_a_400_saying_why(as_viewer, flow, ws, which):
    head = {"other-flow": lambda: factories.flow(ws, name="other-flow").latest_version.pk,
            "unknown": lambda: 99999999, "missing": lambda: "", "garbage": lambda: "x'<"}[which]()
    page = as_viewer.get(f"/dashboard/flows/{flow.pk}/compare/", {"base": flow.latest_version.pk, "head": head})
    assert page.status_code == 400
    html = page.content.decode()
    assert 'role="alert"' in html and "head:" in html
    if which == "other-flow":
        assert "other-flow" in html and "one flow" in html


def test_another_workspaces_flow_is_not_found(as_viewer, other_ws):
    foreign = factories.flow(other_ws)
    assert as_viewer.get(f"/dashboard/flows/{foreign.pk}/").status_code == 404
    v = foreign.latest_version.pk
    assert as_viewer.get(f"/dashboard/flows/{foreign.pk}/compare/", {"base": v, "head": v}).status_code == 404


def test_an_operator_pins_and_unpins_from_the_flow_page(as_operator, flow):
    v = versions_of(flow)
    schedule = factories.schedule(flow)
    html = as_operator.get(f"/dashboard/flows/{flow.pk}/").content.decode()
    assert f'<label for="pin-{schedule.pk}"' in html
    answer = as_operator.post(f"/dashboard/schedules/{schedule.pk}/version/", {"flow_version": v["2"].pk})
    assert answer.status_code == 302 and answer["Location"] == f"/dashboard/flows/{flow.pk}/"
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id == v["2"].pk
    row = as_operator.post(f"/dashboard/schedules/{schedule.pk}/version/", {"flow_version": ""},
                           HTTP_HX_REQUEST="true")
    assert row.status_code == 200 and "Follows the latest" in row.content.decode()
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id is None
    assert list(AuditEntry.objects.filter(target_id=str(schedule.pk)).order_by("id").values_list("action", "via")) \
        == [("schedule.pin", "dashboard"), ("schedule.unpin", "dashboard")]


def test_pinning_another_flows_version_from_the_dashboard_says_why(as_operator, flow, ws):
    other = factories.flow(ws, name="other-flow")
    schedule = factories.schedule(flow)
    page = as_operator.post(f"/dashboard/schedules/{schedule.pk}/version/",
                            {"flow_version": other.latest_version.pk})
    assert page.status_code == 400 and "flow_version:" in page.content.decode()
    row = as_operator.post(f"/dashboard/schedules/{schedule.pk}/version/", {"flow_version": "nope"},
                           HTTP_HX_REQUEST="true")
    assert 'role="alert"' in row.content.decode() and "flow_version:" in row.content.decode()
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id is None
    assert not AuditEntry.objects.filter(target_id=str(schedule.pk)).exists()


def test_a_viewer_cannot_pin(as_viewer, flow):
    schedule = factories.schedule(flow)
    answer = as_viewer.post(f"/dashboard/schedules/{schedule.pk}/version/", {"flow_version": flow.latest_version.pk})
    assert answer.status_code == 403
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id is None


# --- query counts: pages do not grow with the number of versions ----------------------------------

def grow(flow, versions, schedules):
    for i in range(versions):
        flow.register_version(entrypoint="etl.nightly:run", version=f"g{i}", parameters={"i": i})
    pinned_to = list(flow.versions.order_by("created")[:schedules])
    for i in range(schedules):
        # Pinned to old versions, outside the menu's newest: each adds its own choice without a query.
        factories.schedule(flow, flow_version=pinned_to[i % len(pinned_to)])


def queries_for(client, url):
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


@pytest.mark.parametrize("which", ["list", "flow", "flow-page-2", "compare"])
def test_pages_cost_the_same_with_3_versions_or_with_120(as_operator, flow, ws, which, django_assert_max_num_queries):
    def url():
        v = versions_of(flow)
        return {"list": "/dashboard/flows/", "flow": f"/dashboard/flows/{flow.pk}/",
                "flow-page-2": f"/dashboard/flows/{flow.pk}/?page=2",
                "compare": f"/dashboard/flows/{flow.pk}/compare/?base={v['1'].pk}&head={v['3'].pk}"}[which]

    few = queries_for(as_operator, url())
    grow(flow, 117, 12)
    for _ in range(5):
        factories.flow(ws)
    address = url()
    with django_assert_max_num_queries(few):
        assert as_operator.get(address).status_code == 200
    # A fixed handful: session, user, role, the page's own reads.
    assert few <= 12


def test_the_api_version_list_costs_the_same_with_many_versions(viewer, prefix, flow, django_assert_max_num_queries):
    with CaptureQueriesContext(connection) as captured:
        viewer.get(f"{prefix}/flow_versions/", {"flow": flow.pk})
    grow(flow, 117, 0)
    with django_assert_max_num_queries(len(captured.captured_queries)):
        assert len(viewer.get(f"{prefix}/flow_versions/", {"flow": flow.pk, "page_size": 100}).json()["results"]) \
            == 100
