"""The dashboard's delivery log: what automations sent or tried to send, with a retry button for
operators. Plain GET filters and a POST form that redirects back: it works without JavaScript."""

from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from automations import deliveries
from automations.messages import shown_target
from automations.models import Delivery, DeliveryKind, DeliveryStatus
from runs.access import may, scoped, workspace_ids_for
from runs.audit import Who
from runs.dashboard.views import dashboard_login_required
from runs.models import Role

PAGE_ROWS = 50


@dashboard_login_required
def delivery_log(request):
    """Deliveries of the user's workspaces, newest first, filtered by status and kind, in pages."""
    rows = scoped(request, Delivery.objects.select_related("workspace__account").order_by("-created", "-id"))
    status = request.GET.get("status", "")
    status = status if status in DeliveryStatus.values else ""
    kind = request.GET.get("kind", "")
    kind = kind if kind in DeliveryKind.values else ""
    if status:
        rows = rows.filter(status=status)
    if kind:
        rows = rows.filter(kind=kind)
    page = Paginator(rows, PAGE_ROWS).get_page(request.GET.get("page"))
    operable = workspace_ids_for(request, Role.OPERATOR)
    items = [{"delivery": d, "target": shown_target(d.kind, d.target),
              "can_retry": d.status != DeliveryStatus.DELIVERED and (operable is None or d.workspace_id in operable)}
             for d in page.object_list]
    return render(request, "dashboard/deliveries.html", {
        "nav": "deliveries", "now": timezone.now(), "page": page, "items": items, "status": status, "kind": kind,
        "statuses": DeliveryStatus.choices, "kinds": DeliveryKind.choices,
        "query": request.GET.urlencode()})


@dashboard_login_required
@require_POST
def retry(request, pk):
    """Make one failed or pending delivery due now (operators), then back to the log."""
    delivery = scoped(request, Delivery.objects.all()).filter(pk=pk).first()
    if delivery is None:
        raise Http404("No such delivery.")
    if not may(request, Role.OPERATOR, delivery.workspace_id):
        raise PermissionDenied("Retrying a delivery needs the operator role in its workspace.")
    deliveries.retry(Delivery.objects.filter(pk=pk), who=Who.of(request, "dashboard"), now=timezone.now())
    back = request.POST.get("next", "")
    if not back.startswith("/dashboard/deliveries/") or not url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}):
        back = "/dashboard/deliveries/"
    return redirect(back)
