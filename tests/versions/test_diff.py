"""compare_versions: what changed between two versions, key by key, with JSON types."""

from runs.models import FlowVersion
from runs.versions import compare_versions, json_type


def version(**fields):
    return FlowVersion(**{"entrypoint": "etl.flows:nightly", "parameters": {}, "job_env": {}, "secrets": [],
                          **fields})


def test_identical_versions_say_so():
    same = {"parameters": {"day": "yesterday"}, "job_env": {"TZ": "UTC"}, "secrets": ["A"]}
    diff = compare_versions(version(**same), version(**same))
    assert diff["identical"] is True
    assert diff["entrypoint"] == {"old": "etl.flows:nightly", "new": "etl.flows:nightly", "changed": False}
    assert diff["parameters"] == {"added": [], "removed": [], "changed": [], "unchanged": 1}
    assert diff["job_env"]["unchanged"] == 1 and diff["secrets"] == {"added": [], "removed": [], "unchanged": 1}


def test_entrypoint_change_is_reported_with_both_sides():
    diff = compare_versions(version(), version(entrypoint="etl.nightly:run"))
    assert diff["entrypoint"] == {"old": "etl.flows:nightly", "new": "etl.nightly:run", "changed": True}
    assert diff["identical"] is False


def test_parameters_added_removed_and_changed_with_their_types():
    base = version(parameters={"day": "yesterday", "limit": 10, "debug": True, "same": [1, 2]})
    head = version(parameters={"day": 1, "limit": 20, "full": None, "tags": {"a": 1}, "same": [1, 2]})
    p = compare_versions(base, head)["parameters"]
    assert p["added"] == [{"key": "full", "value": None, "type": "null"},
                          {"key": "tags", "value": {"a": 1}, "type": "object"}]
    assert p["removed"] == [{"key": "debug", "value": True, "type": "boolean"}]
    assert p["changed"] == [
        {"key": "day", "old_value": "yesterday", "new_value": 1, "old_type": "string", "new_type": "integer"},
        {"key": "limit", "old_value": 10, "new_value": 20, "old_type": "integer", "new_type": "integer"},
    ]
    assert p["unchanged"] == 1


def test_a_type_change_between_equal_python_values_is_a_change():
    # 1 == 1.0 == True in Python; as JSON defaults they are an integer, a number and a boolean.
    p = compare_versions(version(parameters={"a": 1, "b": 1}), version(parameters={"a": 1.0, "b": True}))["parameters"]
    assert [(c["key"], c["old_type"], c["new_type"]) for c in p["changed"]] == [
        ("a", "integer", "number"), ("b", "integer", "boolean")]


def test_job_env_diff_has_old_and_new_values_and_no_types():
    base = version(job_env={"TZ": "UTC", "DEBUG": "1", "KEEP": "x"})
    head = version(job_env={"TZ": "Europe/Berlin", "KEEP": "x", "REGION": "eu"})
    e = compare_versions(base, head)["job_env"]
    assert e == {"added": [{"key": "REGION", "value": "eu"}], "removed": [{"key": "DEBUG", "value": "1"}],
                 "changed": [{"key": "TZ", "old_value": "UTC", "new_value": "Europe/Berlin"}], "unchanged": 1}


def test_secret_names_added_and_removed_sorted():
    s = compare_versions(version(secrets=["B", "A", "KEEP"]), version(secrets=["KEEP", "Z", "C"]))["secrets"]
    assert s == {"added": ["C", "Z"], "removed": ["A", "B"], "unchanged": 1}


def test_only_secrets_changing_is_not_identical():
    assert compare_versions(version(secrets=["A"]), version(secrets=[]))["identical"] is False


def test_json_types():
    assert [json_type(v) for v in ("x", 1, 1.5, True, None, [], {})] == [
        "string", "integer", "number", "boolean", "null", "array", "object"]
