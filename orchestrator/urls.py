from django.contrib import admin
from django.http import HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from events.webhooks import receive as receive_webhook
from orchestrator.health import healthz
from orchestrator.metrics import metrics
from runs.api.meta import api_not_found
from runs.dashboard.login import RateLimitedAdminAuthenticationForm

# The admin's login page limits failed sign-ins as the dashboard's does (runs/dashboard/login.py).
admin.site.login_form = RateLimitedAdminAuthenticationForm



def favicon(request):
    """Browsers ask for /favicon.ico on every page (the admin's and the API's too)."""
    return HttpResponseRedirect(static("favicon.svg"))


urlpatterns = [
    # First: the API is what programs and agents call many times a second.
    path("api/", include("runs.api.urls")),
    path("favicon.ico", favicon),
    path("", RedirectView.as_view(url="/dashboard/", permanent=False)),
    path("dashboard/", include("runs.dashboard.urls")),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[]), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema", permission_classes=[]), name="api-docs"),
    # Incoming webhooks: outside the API (no key, no session, no CSRF); the slug is the credential.
    path("hooks/<str:slug>", receive_webhook, name="incoming-webhook"),
    # Last: an /api/ URL that no route matched answers in the API's JSON error form.
    re_path(r"^api/", api_not_found),
]

handler500 = "runs.api.meta.api_server_error"
