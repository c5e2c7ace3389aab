"""Messages' storage is made when a request first uses it (orchestrator/lazy_messages.py): an API
request builds none and sets no cookie, and the admin's messages still reach the next page."""

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils.functional import empty

from runs.models import FlowRun
from tests import factories


def test_an_api_request_makes_no_messages_storage(operator, prefix):
    answer = operator.get(f"{prefix}/ping")
    assert answer.status_code == 200
    assert answer.wsgi_request._messages._wrapped is empty
    assert "messages" not in answer.cookies


def test_an_admin_actions_message_is_shown_on_the_next_page(admin_client, ws):
    flow = factories.flow(ws, name="nightly-etl")
    acted = admin_client.post("/admin/runs/flow/", {"action": "run_now", ACTION_CHECKBOX_NAME: [flow.pk]})
    assert acted.status_code == 302
    run = FlowRun.objects.get(flow=flow)
    page = admin_client.get(acted["Location"])
    assert f"Created 1 run(s): {run.name}" in page.content.decode()
    assert "Created 1 run(s)" not in admin_client.get(acted["Location"]).content.decode()
