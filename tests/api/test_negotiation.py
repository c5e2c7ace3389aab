"""The API's content negotiation (runs/api/negotiation.py) reads Accept from META and otherwise is DRF's."""

import pytest
from django.test import RequestFactory
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request

from runs.api.negotiation import ContentNegotiation

RENDERERS = [JSONRenderer(), BrowsableAPIRenderer()]


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json; indent=4", "text/html",
                                    "text/html;q=0.1, application/json", "application/*", "", " , ,",
                                    "x" * 300 + ", application/json", ("a/b," * 5000) + "text/html"])
def test_it_chooses_as_drf_does(accept):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    ours, drf = ContentNegotiation(), DefaultContentNegotiation()

    def choice(negotiation, renderers):
        try:
            renderer, media_type = negotiation.select_renderer(Request(RequestFactory().get("/", **headers)), renderers)
        except Exception as exc:
            return type(exc).__name__
        return type(renderer).__name__, media_type

    for renderers in (RENDERERS, RENDERERS[:1]):
        assert choice(ours, renderers) == choice(drf, renderers)


def test_the_api_uses_it(api, key_for, prefix):
    from rest_framework.settings import api_settings

    assert api_settings.DEFAULT_CONTENT_NEGOTIATION_CLASS is ContentNegotiation
    api.as_key(key_for("viewer"))
    assert api.get(f"{prefix}/ping", HTTP_ACCEPT="text/csv").status_code == 406
    assert api.get(f"{prefix}/ping", HTTP_ACCEPT="application/json").status_code == 200
