"""The cheapest authenticated endpoint, and JSON answers for API URLs that match no route."""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from .errors import error_body


@extend_schema_serializer(examples=[OpenApiExample("An operator key", value={"workspace": "acme/prod",
                                                                            "role": "operator"})])
class PingSerializer(serializers.Serializer):
    workspace = serializers.CharField(help_text="account/workspace")
    role = serializers.CharField(help_text="Your role here: viewer, operator or admin.")


class PingView(APIView):
    """Who am I here: authenticates, resolves the workspace and role, touches nothing else."""

    @extend_schema(responses=PingSerializer)
    def get(self, request, *args, **kwargs):
        return Response({"workspace": str(request.workspace), "role": request.role})


@csrf_exempt  # it reads and changes nothing; without this a POST would get Django's HTML CSRF page
def api_not_found(request, *args, **kwargs):
    """API clients get the JSON error form, never the HTML 404 page, whatever the method."""
    return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}."), status=404)


def api_server_error(request, *args, **kwargs):
    """The 500 handler: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "The server failed; the error is logged."), status=500)
    from django.views.defaults import server_error

    return server_error(request)
