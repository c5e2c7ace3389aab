from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.register("flows", views.FlowViewSet, basename="flow")
router.register("schedules", views.ScheduleViewSet, basename="schedule")
router.register("flow_runs", views.FlowRunViewSet, basename="flow-run")

urlpatterns = [
    path("accounts/<slug:account>/workspaces/<slug:workspace>/", include(router.urls)),
]
