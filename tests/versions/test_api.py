"""Versions over the API: listed newest first in pages, one version, two compared; pinning a schedule."""

import pytest

from runs.models import AuditEntry, FlowRun, Role, Schedule
from tests import factories

from .conftest import versions_of

pytestmark = pytest.mark.django_db


def test_a_flows_versions_are_listed_newest_first_in_pages(viewer, prefix, flow):
    first = viewer.get(f"{prefix}/flow_versions/", {"flow": flow.pk, "page_size": 2}).json()
    assert [v["version"] for v in first["results"]] == ["3", "2"]
    assert first["count"] == 3 and first["next"]
    assert first["results"][0]["is_latest"] and first["results"][0]["flow_name"] == "nightly-etl"
    second = viewer.get(first["next"]).json()
    assert [v["version"] for v in second["results"]] == ["1"] and second["results"][0]["archived"]
    # The flow's own list says the same.
    nested = viewer.get(f"{prefix}/flows/{flow.pk}/versions/").json()
    assert [v["version"] for v in nested["results"]] == ["3", "2", "1"]


def test_the_list_keeps_one_flow_and_never_another_workspaces(viewer, prefix, flow, ws, other_ws):
    factories.flow(ws, name="another")
    foreign = factories.flow(other_ws, name="nightly-etl")
    ids = {v["id"] for v in viewer.get(f"{prefix}/flow_versions/", {"flow": flow.pk}).json()["results"]}
    assert ids == {v.pk for v in flow.versions.all()}
    everything = {v["id"] for v in viewer.get(f"{prefix}/flow_versions/", {"page_size": 500}).json()["results"]}
    assert foreign.latest_version.pk not in everything and len(everything) == 4


def test_one_version(viewer, prefix, flow):
    v3 = versions_of(flow)["3"]
    body = viewer.get(f"{prefix}/flow_versions/{v3.pk}/").json()
    assert body == {"id": v3.pk, "flow": flow.pk, "flow_name": "nightly-etl", "version": "3",
                    "entrypoint": "etl.nightly:run", "parameters": {"day": 1, "full": False},
                    "job_env": {"TZ": "UTC"}, "secrets": ["DB_PASSWORD"], "is_latest": True, "archived": False,
                    "created": body["created"]}


def test_another_workspaces_version_is_not_found(viewer, prefix, other_ws):
    foreign = factories.flow(other_ws)
    assert viewer.get(f"{prefix}/flow_versions/{foreign.latest_version.pk}/").status_code == 404


def test_compare_two_versions(viewer, prefix, flow):
    v = versions_of(flow)
    answer = viewer.get(f"{prefix}/flow_versions/compare/", {"base": v["2"].pk, "head": v["3"].pk})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["flow"] == flow.pk and body["base"]["id"] == v["2"].pk and body["head"]["version"] == "3"
    assert body["identical"] is False
    assert body["entrypoint"] == {"old": "etl.flows:nightly", "new": "etl.nightly:run", "changed": True}
    assert body["parameters"] == {
        "added": [{"key": "full", "value": False, "type": "boolean"}], "removed": [],
        "changed": [{"key": "day", "old_value": "yesterday", "new_value": 1, "old_type": "string",
                     "new_type": "integer"}], "unchanged": 0}
    assert body["job_env"] == {"added": [{"key": "TZ", "value": "UTC"}], "removed": [], "changed": [],
                               "unchanged": 0}
    assert body["secrets"] == {"added": ["DB_PASSWORD"], "removed": [], "unchanged": 0}


def test_comparing_versions_of_two_flows_is_a_400_naming_head(viewer, prefix, flow, ws):
    other = factories.flow(ws, name="other-flow")
    answer = viewer.get(f"{prefix}/flow_versions/compare/",
                        {"base": flow.latest_version.pk, "head": other.latest_version.pk})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert list(error["fields"]) == ["head"] and "other-flow" in error["message"] and "one flow" in error["message"]


@pytest.mark.parametrize("query, field", [
    ({"head": "LATEST"}, "base"),                 # base missing
    ({"base": "abc", "head": "LATEST"}, "base"),  # not a number
    ({"base": "LATEST", "head": "999999999"}, "head"),  # no such version
    ({"base": "LATEST", "head": str(2**70)}, "head"),   # past any id
    ({"base": "LATEST", "head": "-3"}, "head"),
    ({"base": "LATEST"}, "head"),
])
def test_bad_compare_parameters_are_400s_naming_the_field(viewer, prefix, flow, query, field):
    query = {k: str(flow.latest_version.pk) if val == "LATEST" else val for k, val in query.items()}
    answer = viewer.get(f"{prefix}/flow_versions/compare/", query)
    assert answer.status_code == 400, answer.content
    assert list(answer.json()["error"]["fields"]) == [field]


def test_another_workspaces_version_cannot_be_compared(viewer, prefix, flow, other_ws):
    foreign = factories.flow(other_ws)
    answer = viewer.get(f"{prefix}/flow_versions/compare/",
                        {"base": flow.latest_version.pk, "head": foreign.latest_version.pk})
    assert answer.status_code == 400 and "No version" in answer.json()["error"]["fields"]["head"][0]


def test_reading_needs_a_role_in_the_workspace(api, prefix, flow, other_ws):
    stranger = api.as_key(factories.api_key(other_ws, role=Role.ADMIN)[1])
    assert stranger.get(f"{prefix}/flow_versions/").status_code == 404
    v = flow.latest_version.pk
    assert stranger.get(f"{prefix}/flow_versions/compare/", {"base": v, "head": v}).status_code == 404


def test_versions_are_read_only(admin, prefix, flow):
    v = flow.latest_version.pk
    assert admin.patch(f"{prefix}/flow_versions/{v}/", {"version": "x"}, format="json").status_code == 405
    assert admin.delete(f"{prefix}/flow_versions/{v}/").status_code == 405
    assert flow.versions.filter(version="x").count() == 0 and flow.versions.count() == 3


# --- pinning through the schedule API -------------------------------------------------------------

def test_an_operator_pins_and_unpins_a_schedule(operator, prefix, flow):
    v = versions_of(flow)
    schedule = factories.schedule(flow)
    answer = operator.post(f"{prefix}/schedules/{schedule.pk}/pin/", {"flow_version": v["1"].pk}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["flow_version"] == v["1"].pk
    assert set(FlowRun.objects.filter(schedule=schedule).values_list("flow_version_id", flat=True)) <= {v["1"].pk}
    answer = operator.post(f"{prefix}/schedules/{schedule.pk}/unpin/")
    assert answer.status_code == 200 and answer.json()["flow_version"] is None
    assert list(AuditEntry.objects.filter(target_id=str(schedule.pk)).order_by("id").values_list("action", "via")) \
        == [("schedule.pin", "api"), ("schedule.unpin", "api")]


def test_a_viewer_cannot_pin(viewer, prefix, flow):
    schedule = factories.schedule(flow)
    answer = viewer.post(f"{prefix}/schedules/{schedule.pk}/pin/", {"flow_version": flow.latest_version.pk},
                         format="json")
    assert answer.status_code == 403
    assert viewer.post(f"{prefix}/schedules/{schedule.pk}/unpin/").status_code == 403
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id is None


@pytest.mark.parametrize("value", ["OTHER_FLOW", 999999999, "abc", None, True, 2**70])
def test_pinning_a_version_that_is_not_the_flows_is_a_400_naming_flow_version(operator, prefix, flow, ws, value):
    if value == "OTHER_FLOW":
        value = factories.flow(ws, name="other-flow").latest_version.pk
    schedule = factories.schedule(flow)
    answer = operator.post(f"{prefix}/schedules/{schedule.pk}/pin/", {"flow_version": value}, format="json")
    assert answer.status_code == 400, answer.content
    assert list(answer.json()["error"]["fields"]) == ["flow_version"]
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id is None


def test_schedules_say_whether_they_are_pinned_and_patch_can_pin(admin, prefix, flow, ws):
    v = versions_of(flow)
    schedule = factories.schedule(flow)
    assert admin.get(f"{prefix}/schedules/{schedule.pk}/").json()["flow_version"] is None
    answer = admin.patch(f"{prefix}/schedules/{schedule.pk}/", {"flow_version": v["2"].pk}, format="json")
    assert answer.status_code == 200, answer.content
    assert Schedule.objects.get(pk=schedule.pk).flow_version_id == v["2"].pk
    entry = AuditEntry.objects.get(target_id=str(schedule.pk), action="schedule.change")
    assert entry.after == {"flow_version_id": v["2"].pk}
    other = factories.flow(ws, name="other-flow")
    refused = admin.patch(f"{prefix}/schedules/{schedule.pk}/", {"flow_version": other.latest_version.pk},
                          format="json")
    assert refused.status_code == 400 and list(refused.json()["error"]["fields"]) == ["flow_version"]


def test_creating_a_schedule_pinned_to_another_flows_version_is_refused(admin, prefix, flow, ws):
    other = factories.flow(ws, name="other-flow")
    answer = admin.post(f"{prefix}/schedules/", {"flow": "nightly-etl", "slug": "hourly", "kind": "interval",
                                                 "interval_seconds": 3600,
                                                 "flow_version": other.latest_version.pk}, format="json")
    assert answer.status_code == 400 and list(answer.json()["error"]["fields"]) == ["flow_version"]
    assert not Schedule.objects.filter(slug="hourly").exists()


def test_a_schedule_created_pinned_makes_its_runs_with_the_pinned_version(admin, prefix, flow):
    v1 = versions_of(flow)["1"]
    answer = admin.post(f"{prefix}/schedules/", {"flow": "nightly-etl", "slug": "hourly", "kind": "interval",
                                                 "interval_seconds": 3600, "flow_version": v1.pk}, format="json")
    assert answer.status_code == 201, answer.content
    runs = FlowRun.objects.filter(schedule_id=answer.json()["id"])
    assert runs.exists() and set(runs.values_list("flow_version_id", flat=True)) == {v1.pk}
