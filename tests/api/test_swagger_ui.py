"""Swagger UI in Debian's Chromium: it renders every operation of the schema from local files only."""

from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_swagger_ui_renders_every_operation_without_leaving_the_server(page, live_browser_server):
    hosts = set()
    page.on("request", lambda request: hosts.add(urlparse(request.url).netloc))
    page.goto(f"{live_browser_server.url}/api/docs/")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible(timeout=20_000)
    schema = page.request.get(f"{live_browser_server.url}/api/schema/?format=json").json()
    documented = sum(len(methods) for methods in schema["paths"].values())
    expect(operations).to_have_count(documented)
    assert documented >= 58
    # Open one operation: its example request body is there, from the serializer's example.
    page.locator(".opblock-post", has_text="/set_state/").first.click()
    expect(page.locator(".opblock-body").first).to_contain_text("Stuck on a lock")
    assert hosts == {urlparse(live_browser_server.url).netloc}, f"requests left the server: {hosts}"
