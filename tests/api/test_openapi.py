"""The OpenAPI document: complete, valid, and its examples true to its schemas.

Every operation must say what it does, what it takes and what it answers, each with an example,
and list its error answers in the one error form. The examples are checked against the schemas
they illustrate, so a renamed or retyped field cannot leave a stale example behind.
"""

import copy

import pytest
from django.core.management import call_command
from jsonschema import Draft202012Validator

from runs.api.schema import WORKSPACE_PREFIX

BODY_METHODS = {"post", "put", "patch"}
ERROR_FORMS = {"#/components/schemas/Error", "#/components/schemas/Conflict"}


@pytest.fixture(scope="module")
def document(django_db_blocker):
    from drf_spectacular.generators import SchemaGenerator

    with django_db_blocker.unblock():
        return SchemaGenerator().get_schema(request=None, public=True)


def operations(document):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", method, path, operation


def as_json_schema(node):
    """OpenAPI 3.0 schema objects → JSON Schema: `nullable` becomes a null alternative."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        if "type" in converted:
            converted["type"] = [converted["type"], "null"]
        else:
            converted = {"anyOf": [converted, {"type": "null"}]}
    return converted


def examples_of(document):
    """(where, media object) for every request body and response that has content."""
    for name, method, path, operation in operations(document):
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body:
            yield f"{name} request", body
        for code, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json")
            if content:
                yield f"{name} {code}", content


def test_the_schema_generates_without_warnings_and_validates(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").stat().st_size > 10_000


def test_every_workspace_operation_is_described_in_its_own_words_and_tagged(document):
    seen = {}
    for name, method, path, operation in operations(document):
        if not path.startswith(WORKSPACE_PREFIX):
            continue
        description = operation.get("description", "").strip()
        assert description, f"{name} has no description"
        # A description shared by two operations is a class docstring drf-spectacular fell back to.
        assert description not in seen, f"{name} and {seen.get(description)} share the description {description!r}"
        seen[description] = name
        assert operation.get("tags"), f"{name} has no tag"


def test_every_body_and_answer_has_a_schema_and_an_example(document):
    for name, method, path, operation in operations(document):
        if not path.startswith(WORKSPACE_PREFIX):
            continue
        if method in BODY_METHODS and "requestBody" in operation:
            body = operation["requestBody"]["content"]["application/json"]
            assert "schema" in body and body.get("examples"), f"{name}: request without schema or example"
        successes = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
        assert successes, f"{name} documents no success answer"
        for code, response in successes.items():
            if code == "204":
                assert "content" not in response, f"{name} 204 must not have a body"
                continue
            # JSON, or for a file download (logs/download/) the file's own types, each with an example.
            contents = [response["content"]["application/json"]] if "application/json" in response["content"] \
                else list(response["content"].values())
            for content in contents:
                assert "schema" in content and content.get("examples"), f"{name} {code}: no schema or example"


def test_every_error_answer_has_the_error_form(document):
    for name, method, path, operation in operations(document):
        if not path.startswith(WORKSPACE_PREFIX):
            continue
        codes = set(operation["responses"])
        assert {"400", "401", "403", "404", "429"} <= codes, f"{name} lacks common errors: {sorted(codes)}"
        for code, response in operation["responses"].items():
            if code >= "400":
                schema = response["content"]["application/json"]["schema"]
                assert schema["$ref"] in ERROR_FORMS, f"{name} {code}: {schema}"
        if "429" in codes:
            assert "Retry-After" in operation["responses"]["429"]["headers"]


def test_every_conflict_answer_names_the_current_state(document):
    conflict = document["components"]["schemas"]["Conflict"]
    error = document["components"]["schemas"]["Error"]
    assert set(error["properties"]) < set(conflict["properties"]) and "current_state" in conflict["properties"]
    changes = [name for name, _, path, op in operations(document)
               if path.endswith(("/set_state/", "/cancel/", "/retry/", "/state", "/task_runs"))
               and "/deliveries/" not in path]  # a delivery's retry is no state change (its 409: Error)
    assert len(changes) == 6
    for name, _, path, operation in operations(document):
        if name in changes:
            assert operation["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/Conflict"), name


def test_every_example_matches_its_schema(document):
    components = as_json_schema(document["components"])
    checked = 0
    for where, media in examples_of(document):
        schema = {**as_json_schema(copy.deepcopy(media["schema"])), "components": components}
        validator = Draft202012Validator(schema)
        for title, example in media.get("examples", {}).items():
            problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(example["value"])]
            assert not problems, f"{where} example {title!r}: {problems}"
            checked += 1
    assert checked >= 100, checked  # a request and an answer for most of the 58 operations, errors included


def test_the_example_check_catches_a_wrong_example():
    schema = as_json_schema({"type": "object", "required": ["id"], "properties": {
        "id": {"type": "integer"}, "agent": {"type": "string", "nullable": True}}})
    validator = Draft202012Validator(schema)
    assert not list(validator.iter_errors({"id": 1, "agent": None}))
    assert list(validator.iter_errors({"id": "one", "agent": None}))
    assert list(validator.iter_errors({"agent": "a"}))
