"""Hostile input answers 4xx in the one error form, never 5xx and never a hang: bodies nested
past any sane depth, giant bodies, numbers no database can hold, oversized query values, unicode
oddities in names, slugs and paths.

The body tests run over every operation of the permission matrix (which must name every
operation of the OpenAPI schema) that takes a body, in each media type the schema lists.
"""

import json
from urllib.parse import quote, urlencode

import pytest
from drf_spectacular.generators import SchemaGenerator

from runs.api.schema import WORKSPACE_PREFIX
from runs.models import FlowRun
from tests import factories
from tests.conftest import api_prefix

from .test_permission_matrix import ENDPOINTS, authenticate_as_able, fill, shape, world

DEPTH_LIMIT = 64  # ORCHESTRATOR_API_MAX_JSON_DEPTH's default
MEDIA = ["json", "form", "multipart"]
WRITES = [endpoint for endpoint in ENDPOINTS if endpoint[1] in ("post", "put", "patch")]
READS = [endpoint for endpoint in ENDPOINTS if endpoint[1] == "get"]


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def operation(schema, method, path):
    """The schema's operation for a row of the permission matrix."""
    for documented, operations in schema["paths"].items():
        if documented.startswith(WORKSPACE_PREFIX) and shape(documented[len(WORKSPACE_PREFIX):]) == shape(path):
            return operations[method]
    raise AssertionError(f"{method} {path} is not in the schema")


def nested(depth, leaf=1):
    """`depth` levels of arrays and objects, alternating, built without recursion."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def deep_text(depth):
    return "[" * depth + "]" * depth


def send(client, method, url, body, media):
    """`body` (a dict) or raw JSON text, in the media type named."""
    if media == "json":
        raw = body if isinstance(body, str) else json.dumps(body)
        return getattr(client, method)(url, raw, content_type="application/json")
    if media == "form":
        return getattr(client, method)(url, urlencode(body), content_type="application/x-www-form-urlencoded")
    return getattr(client, method)(url, body, format="multipart")


def assert_error_form(response, status):
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert set(body["error"]) == {"code", "message", "fields"}, body
    return body["error"]


# --- nesting ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("media", MEDIA)
@pytest.mark.parametrize("depth", [DEPTH_LIMIT + 1, 1200], ids=["just-past-the-limit", "1200-levels"])
@pytest.mark.parametrize("endpoint", WRITES, ids=[e[0] for e in WRITES])
def test_a_body_nested_past_the_limit_is_a_400_naming_the_limit(api, ws, schema, endpoint, depth, media):
    name, method, path, body, *_ = endpoint
    names = world(ws)
    authenticate_as_able(api, ws, endpoint, names)
    url = f"{api_prefix(ws)}/{fill(path, names)}"
    if media == "json":
        # The whole body nested (the parser's recursion), or a field of a valid body (the walk).
        sent = deep_text(depth) if depth > 1000 else {**fill(body or {}, names), "parameters": nested(depth - 1)}
    else:  # JSON text in a form field, as a form-encoded `parameters` or `calendar` would be
        sent = {**{k: v for k, v in fill(body or {}, names).items() if isinstance(v, str)},
                "parameters": deep_text(depth)}
    response = send(api, method, url, sent, media)
    if "requestBody" not in operation(schema, method, path):
        assert response.status_code < 500  # it reads no body, so there is nothing to refuse
        return
    error = assert_error_form(response, 400)
    assert f"more than {DEPTH_LIMIT} levels" in error["message"], error
    assert "ORCHESTRATOR_API_MAX_JSON_DEPTH" in error["message"]
    if media == "json":
        assert "request body" in error["message"] and ("body" in error["fields"] or "parameters" in error["fields"])
    else:
        assert "parameters" in error["fields"], error


def test_a_body_at_the_limit_is_taken_and_answered_whole(operator, prefix, ws):
    flow = factories.flow(ws)
    parameters = nested(DEPTH_LIMIT - 1)  # inside the body's own object: DEPTH_LIMIT levels
    created = operator.post(f"{prefix}/flow_runs/", {"flow": flow.name, "parameters": parameters}, format="json")
    assert created.status_code == 201, created.content[:300]
    assert created.json()["parameters"] == parameters
    assert operator.get(f"{prefix}/flow_runs/{created.json()['id']}/").json()["parameters"] == parameters


def test_the_highest_limit_allowed_still_stores_and_answers(operator, prefix, ws, settings):
    """500 levels (the most ORCHESTRATOR_API_MAX_JSON_DEPTH accepts) pass parser, database and
    renderer, each of which recurses, without reaching Python's recursion limit."""
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "API_MAX_JSON_DEPTH": 500}
    flow = factories.flow(ws)
    parameters = nested(499)
    created = operator.post(f"{prefix}/flow_runs/", {"flow": flow.name, "parameters": parameters}, format="json")
    assert created.status_code == 201, created.content[:300]
    assert FlowRun.objects.get(pk=created.json()["id"]).parameters == parameters
    assert operator.get(f"{prefix}/flow_runs/{created.json()['id']}/").json()["parameters"] == parameters


def test_the_body_checks_walk_any_depth_without_recursion(settings):
    from runs.api.parsers import refusal

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "API_MAX_JSON_DEPTH": 500}
    # 100,000 levels: any recursive walk would raise RecursionError long before.
    assert "more than 500 levels" in refusal(nested(100_000))
    assert refusal(nested(499, leaf="fine")) is None
    assert "NUL" in refusal(nested(499, leaf="bad\x00"))


@pytest.mark.parametrize("text, refused", [
    ('{"a": "\\u0000"}', True), ('{"a": "\\uD800"}', True), ('{"a": "x\\udfff"}', True),
    ('{"\\u0000": 1}', True),  # in a key
    ('{"a": "\\\\u0000"}', False),  # an escaped backslash, then the letters u0000: storable text
    ('{"a": "\\u00e9 \\ud7ff \\ue000"}', False),  # escapes of characters that are fine
])
def test_json_strings_are_judged_by_their_escapes_and_the_doubtful_walked(text, refused):
    """`loads` looks at strings only when the text has an escape that could be a NUL or a surrogate;
    a backslash that merely looks like one gets the whole walk, which finds the text fine."""
    from rest_framework.exceptions import ParseError

    from runs.api.parsers import loads

    if refused:
        with pytest.raises(ParseError, match="NUL"):
            loads(text)
    else:
        assert loads(text) == json.loads(text)


@pytest.mark.parametrize("escaped, problem", [(b"\\ud800", "surrogates"), (b"\\u0000", "NUL")])
def test_a_body_whose_charset_turns_escapes_into_characters_is_still_judged(operator, prefix, ws, escaped, problem):
    """Django takes any codec Python knows from the Content-Type's charset; unicode_escape turns the
    text's escapes into the characters themselves before JSON sees them."""
    flow = factories.flow(ws)
    body = b'{"flow": "%s", "parameters": {"x": "a%sb"}}' % (flow.name.encode(), escaped)
    response = operator.generic("POST", f"{prefix}/flow_runs/", body,
                                content_type="application/json; charset=unicode_escape")
    assert response.status_code == 400, response.content[:300]
    assert problem in response.json()["error"]["message"] or "JSON parse error" in response.json()["error"]["message"]
    assert not FlowRun.objects.filter(flow=flow).exists()


def test_without_escapes_the_depth_is_still_judged(settings):
    from rest_framework.exceptions import ParseError

    from runs.api.parsers import loads

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "API_MAX_JSON_DEPTH": 5}
    assert loads(json.dumps({"a": [{"b": [1]}]})) == {"a": [{"b": [1]}]}  # 4 levels
    with pytest.raises(ParseError, match="more than 5 levels"):
        loads(json.dumps({"a": [{"b": [{"c": []}]}]}))  # 6 levels
    with pytest.raises(ParseError, match="more than 5 levels"):
        loads(json.dumps([[[[[[]]]]]]))


# --- numbers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("number, problem", [
    ("NaN", "finite"), ("Infinity", "finite"), ("-Infinity", "finite"), ("1e400", "finite"), ("-1e400", "finite"),
    ("1" * 10_000 + ".5", "finite"),  # a 10,000-digit float overflows to inf
    ("1" * 5000, "at most 4300 digits"),  # 10**5000 as a JSON number: past Python's int-string limit
    ("-" + "1" * 5000, "at most 4300 digits"),
])
def test_numbers_no_database_can_hold_are_a_400_not_a_500(operator, prefix, ws, number, problem):
    flow = factories.flow(ws)
    body = '{"flow": "%s", "parameters": {"x": %s}}' % (flow.name, number)
    error = assert_error_form(operator.post(f"{prefix}/flow_runs/", body, content_type="application/json"), 400)
    assert problem in error["message"], error
    assert not FlowRun.objects.filter(flow=flow).exists()


@pytest.mark.parametrize("media", ["form", "multipart"])
def test_a_form_field_holding_json_with_nan_is_refused_naming_the_field(admin, prefix, ws, media):
    flow = factories.flow(ws)
    body = {"flow": flow.name, "slug": "cal", "kind": "calendar", "calendar": '{"base": {"rule": "every_day"}, "x": NaN}'}
    error = assert_error_form(send(admin, "post", f"{prefix}/schedules/", body, media), 400)
    assert "calendar" in error["fields"] and "finite" in error["message"], error


def test_a_4000_digit_integer_is_kept_as_sent(operator, prefix, ws):
    flow = factories.flow(ws)
    big = int("7" * 4000)
    body = '{"flow": "%s", "parameters": {"x": %d}}' % (flow.name, big)
    created = operator.post(f"{prefix}/flow_runs/", body, content_type="application/json")
    assert created.status_code == 201, created.content[:300]
    assert operator.get(f"{prefix}/flow_runs/{created.json()['id']}/").json()["parameters"] == {"x": big}


@pytest.mark.parametrize("huge", [10**4000, -(10**30), 2**63, 1e308], ids=["4000-digits", "-1e30", "2^63", "1e308"])
@pytest.mark.parametrize("endpoint", WRITES, ids=[e[0] for e in WRITES])
def test_huge_numbers_in_any_field_are_never_a_5xx(api, ws, endpoint, huge):
    name, method, path, body, *_ = endpoint
    names = world(ws)
    authenticate_as_able(api, ws, endpoint, names)
    valid = fill(body or {}, names)
    for field in valid or ["id"]:
        response = getattr(api, method)(f"{api_prefix(ws)}/{fill(path, names)}", {**valid, field: huge}, format="json")
        assert response.status_code < 500, (field, response.content[:300])


# --- size ------------------------------------------------------------------------------------------

FIFTY_MB = 50 * 1024 * 1024


@pytest.mark.parametrize("media", MEDIA)
def test_a_50_mb_body_is_a_413_in_the_error_form(operator, prefix, ws, media):
    flow = factories.flow(ws)
    if media == "json":
        response = operator.post(f"{prefix}/flow_runs/", b'{"flow": "%s", "name": "%s"}' % (
            flow.name.encode(), b"a" * FIFTY_MB), content_type="application/json")
    elif media == "form":
        response = operator.post(f"{prefix}/flow_runs/", b"flow=%s&name=%s" % (flow.name.encode(), b"a" * FIFTY_MB),
                                 content_type="application/x-www-form-urlencoded")
    else:  # a file part: Django streams those to disk and does not count them against its limit
        from django.core.files.uploadedfile import SimpleUploadedFile

        upload = SimpleUploadedFile("big.bin", b"a" * FIFTY_MB)
        response = operator.post(f"{prefix}/flow_runs/", {"flow": flow.name, "upload": upload}, format="multipart")
    error = assert_error_form(response, 413)
    assert error["code"] == "payload_too_large" and "2621440 bytes" in error["message"], error
    assert not FlowRun.objects.filter(flow=flow).exists()


def test_the_body_limit_is_a_setting_named_in_the_answer(operator, prefix, ws, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    flow = factories.flow(ws)
    error = assert_error_form(operator.post(f"{prefix}/flow_runs/", {"flow": flow.name, "name": "n" * 2000},
                                            format="json"), 413)
    assert "1000 bytes" in error["message"] and "ORCHESTRATOR_API_MAX_BODY_BYTES" in error["message"]


def test_too_many_form_fields_is_a_400_in_the_error_form(operator, prefix, ws):
    body = "&".join(f"f{i}=1" for i in range(1500))  # Django refuses more than 1,000
    response = operator.post(f"{prefix}/flow_runs/", body, content_type="application/x-www-form-urlencoded")
    assert_error_form(response, 400)


# --- query parameters ------------------------------------------------------------------------------

HOSTILE_QUERY_VALUES = ["9" * 10_000, "-" + "9" * 30, "1e400", "NaN", "-1", "0", "\u202eevil", "e\u0301\u0301",
                        "\U0001f680", "[" * 1200, "%ff", " "]


@pytest.mark.parametrize("endpoint", READS, ids=[e[0] for e in READS])
def test_hostile_query_values_are_never_a_5xx(admin, ws, schema, endpoint):
    name, method, path, *_ = endpoint
    names = world(ws)
    documented = [p["name"] for p in operation(schema, method, path).get("parameters", []) if p["in"] == "query"]
    base = f"{api_prefix(ws)}/{fill(path.split('?')[0], names)}"
    for parameter in {*documented, "page", "page_size", "limit", "cursor", "offset"}:
        for value in HOSTILE_QUERY_VALUES:
            response = admin.get(f"{base}?{quote(parameter)}={quote(value)}")
            assert response.status_code < 500, (parameter, value[:20], response.content[:300])
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"code", "message", "fields"}


def test_a_huge_page_size_is_capped_not_refused(operator, prefix, ws):
    flow = factories.flow(ws)
    for _ in range(3):
        factories.flow_run(flow)
    for value in ["9" * 10_000, str(2**64)]:
        response = operator.get(f"{prefix}/flow_runs/?page_size={value}")
        assert response.status_code == 200 and len(response.json()["results"]) == 3
        assert operator.get(f"{prefix}/flows/?page_size={value}").status_code == 200


# --- unicode ---------------------------------------------------------------------------------------

ODD_NAMES = {"rtl-override": "\u202eevil.exe", "combining": "e\u0301\u0301\u0301\u0301", "emoji": "\U0001f680 etl",
             "non-bmp": "\U00010348-\U0001d11e", "rtl-script": "\u05e9\u05dc\u05d5\u05dd"}


@pytest.mark.parametrize("name", ODD_NAMES.values(), ids=ODD_NAMES.keys())
def test_odd_unicode_names_are_stored_and_answered_exactly(admin, prefix, ws, name):
    created = admin.post(f"{prefix}/flows/", {"name": name}, format="json")
    assert created.status_code == 201, created.content
    assert admin.get(f"{prefix}/flows/{created.json()['id']}/").json()["name"] == name
    queue = admin.post(f"{prefix}/work_queues/", {"name": name}, format="json")
    assert queue.status_code == 201 and queue.json()["name"] == name, queue.content


@pytest.mark.parametrize("slug", ODD_NAMES.values(), ids=ODD_NAMES.keys())
def test_odd_unicode_slugs_are_a_400_naming_the_slug(admin, prefix, ws, slug):
    flow = factories.flow(ws)
    response = admin.post(f"{prefix}/schedules/", {"flow": flow.name, "slug": slug, "kind": "interval",
                                                    "interval_seconds": 60}, format="json")
    assert "slug" in assert_error_form(response, 400)["fields"]


@pytest.mark.parametrize("segment", ["%F0%9F%9A%80", "%E2%80%AE", "%ff%fe", "e%CC%81", "%00"])
def test_odd_unicode_in_url_paths_is_a_json_404(admin, ws, segment):
    for url in (f"/api/accounts/{segment}/workspaces/{ws.slug}/flows/",
                f"{api_prefix(ws)}/flows/{segment}/", f"{api_prefix(ws)}/flow_runs/{segment}/"):
        response = admin.get(url)
        assert response.status_code in (400, 404), (url, response.content[:200])
        assert set(response.json()["error"]) == {"code", "message", "fields"}


# --- incoming webhooks (POST /hooks/<slug>, outside the API: {"detail"} answers) -------------------

HOOK_BODIES = {
    "nested-past-the-limit": ("[" * 100_000 + "]" * 100_000, "application/json", 400),
    "nan": ('{"a": NaN}', "application/json", 400),
    "number-past-a-double": ('{"a": 1e999}', "application/json", 400),
    "nul-in-a-string": ('{"a": "\\u0000"}', "application/json", 400),
    "lone-surrogate": ('{"a": "\\ud800"}', "application/json", 400),
    "not-utf-8": (b"\xff\xfe{}", "application/json", 400),
    "too-many-form-fields": ("a=1&" * 5000, "application/x-www-form-urlencoded", 400),
    "4000-digit-integer": ('{"a": ' + "1" * 4000 + "}", "application/json", 202),
    "a-bare-number": ("5", "application/json", 202),
}


@pytest.mark.parametrize("raw,media,status", list(HOOK_BODIES.values()), ids=list(HOOK_BODIES))
def test_hostile_bodies_to_an_incoming_webhook_are_never_a_5xx(ws, raw, media, status, settings):
    from django.test import Client

    from events.models import IncomingWebhook

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "hooks"}}
    hook = IncomingWebhook.objects.create(workspace=ws, name=f"hook-{factories.n()}",
                                          template={"name": "deploy.done", "payload": {"v": "{{ body }}"}})
    response = Client().post(f"/hooks/{hook.slug}", raw if isinstance(raw, bytes) else raw.encode(),
                             content_type=media)
    assert response.status_code == status, response.content[:300]
    assert "detail" in response.json() or "id" in response.json()


def test_a_50_mb_body_to_an_incoming_webhook_is_a_413_unread(ws):
    from django.test import Client

    from events.models import IncomingWebhook

    hook = IncomingWebhook.objects.create(workspace=ws, name=f"hook-{factories.n()}")
    response = Client().post(f"/hooks/{hook.slug}", b"[" * 50_000_000, content_type="application/json")
    assert response.status_code == 413 and "ORCHESTRATOR_WEBHOOK_MAX_BODY_BYTES" in response.json()["detail"]


@pytest.mark.parametrize("slug", ["nope", "x" * 5000, "%00", "é"])
def test_a_bad_slug_is_a_json_404(db, slug):
    from django.test import Client

    response = Client().post(f"/hooks/{slug}", b"{}", content_type="application/json")
    assert response.status_code == 404 and response.json()["detail"]
