"""The delivery log in Debian's Chromium: accessible, and an operator's retry works from the page."""

import pytest
from playwright.sync_api import expect

from automations.models import Delivery, DeliveryKind, DeliveryStatus
from runs.models import Role
from tests import factories
from tests.dashboard.conftest import ARTIFACTS
from tests.dashboard.test_browser import axe_violations, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_delivery_log_is_accessible_and_retry_works(page, live_browser_server):
    ws = factories.workspace(name="Production")
    factories.member(ws, role=Role.OPERATOR, username="ops")
    failed = Delivery.objects.create(workspace=ws, kind=DeliveryKind.WEBHOOK, target="https://hooks.example.com/in",
                                     status=DeliveryStatus.FAILED, attempts=8, last_status_code=500,
                                     last_error="HTTP 500: upstream broke")
    Delivery.objects.create(workspace=ws, kind=DeliveryKind.EMAIL, target="ops@example.com",
                            subject="[Orchestrator] runs failing", status=DeliveryStatus.DELIVERED, attempts=1)
    log_in(page, live_browser_server)
    page.get_by_role("link", name="Deliveries").click()
    expect(page.get_by_role("heading", name="Deliveries", level=1)).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "deliveries.png"), full_page=True)
    assert axe_violations(page) == []
    row = page.locator(f"#delivery-{failed.pk}")
    expect(row).to_contain_text("Failed (gave up)")
    row.get_by_role("button", name="Retry now").click()
    expect(page.locator(f"#delivery-{failed.pk}")).to_contain_text("Pending")
    failed.refresh_from_db()
    assert failed.status == DeliveryStatus.PENDING
