"""The body template renderer: dotted paths only, missing paths empty, every size bounded."""

import json

import pytest

from automations import messages
from automations.messages import TemplateError, check_template, json_document, render, shown_url

DOC = {"automation": {"id": 3, "name": "ops"}, "reason": "late", "resource": None,
       "events": [{"name": "flow-run.state.crashed", "resource": {"kind": "flow-run", "id": "r1"}, "payload": {"n": 2}}]}


def test_paths_resolve_keys_and_list_indexes():
    assert render("{{automation.name}}: {{ events.0.resource.id }} ({{ events.0.payload }})", DOC) == \
        'ops: r1 ({"n":2})'


def test_missing_paths_render_empty_and_json_null():
    assert render("[{{ nope }}][{{ events.5.name }}][{{ automation.name.upper }}][{{ resource }}]", DOC) == "[][][][]"
    assert render("{{ nope|json }},{{ resource|json }}", DOC) == "null,null"


def test_json_filter_quotes_and_escapes():
    doc = {"reason": 'a "quoted"\nline'}
    assert json.loads(render('{"r": {{ reason|json }}}', doc)) == {"r": 'a "quoted"\nline'}


def test_no_attribute_access_or_evaluation():
    assert render("{{ __class__ }}{{ automation.__class__ }}{{ automation.name.__len__ }}", DOC) == ""
    for bad in ("{{ 1+1 }}", "{{ automation['name'] }}", "{{ " + "a" * 101 + " }}"):
        with pytest.raises(TemplateError, match="not a dotted path"):
            check_template(bad)


def test_nesting_is_bounded():
    deep = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": "deep"}}}}}}}}}}}
    assert render("{{ a.b.c.d.e.f.g.h.i.j }}", deep) == '{"k":"deep"}'  # 10 parts: allowed
    with pytest.raises(TemplateError, match="deeper than 10"):
        render("{{ a.b.c.d.e.f.g.h.i.j.k }}", deep)
    assert messages.lookup(deep, "a.b.c.d.e.f.g.h.i.j.k") is messages.MISSING


def test_template_size_and_type_are_bounded():
    with pytest.raises(TemplateError, match="20000"):
        check_template("x" * 20_001)
    with pytest.raises(TemplateError):
        check_template({"not": "a string"})


def test_output_is_cut_at_64_kib_even_from_many_placeholders():
    doc = {"big": "é" * 50_000}  # 100,000 bytes of UTF-8 per use
    out = render("{{ big }}" * 100, doc)
    assert len(out.encode()) <= 65_536
    out.encode().decode()  # never cut inside a character
    assert render("{{ big }}", {"big": "x" * 10}, max_bytes=4) == "xxxx"


def test_default_body_stays_valid_json_under_the_bound():
    doc = {**DOC, "events": [{"name": "e", "payload": {"blob": "x" * 10_000}, "i": i} for i in range(20)]}
    body = json_document(doc)
    assert len(body.encode()) <= 65_536
    kept = json.loads(body)["events"]
    assert 0 < len(kept) < 20 and kept[-1]["i"] == 19  # the oldest were left out


def test_shown_urls_hide_what_may_be_a_token():
    assert shown_url("https://u:p@hooks.example.com:8443/in?token=abc") == "https://hooks.example.com:8443/in?…"
    assert shown_url("https://hooks.slack.com/services/T/B/secret", hide_path=True) == "https://hooks.slack.com/…"
