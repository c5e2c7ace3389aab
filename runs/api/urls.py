from django.urls import include, path
from rest_framework.routers import SimpleRouter

from automations import api as automations_api
from automations.delivery_api import DeliveryViewSet

from . import (audit, deletions, events, flow_runs, flows, logs, members, meta, secrets, task_runs, usage, versions,
               views, work_queues)

router = SimpleRouter()
router.register("flows", flows.FlowViewSet, basename="flow")
router.register("flow_versions", versions.FlowVersionViewSet, basename="flow-version")
router.register("schedules", views.ScheduleViewSet, basename="schedule")
router.register("flow_runs", flow_runs.FlowRunViewSet, basename="flow-run")
router.register("task_runs", task_runs.TaskRunViewSet, basename="task-run")
router.register("logs", logs.LogViewSet, basename="log")
router.register("work_queues", work_queues.WorkQueueViewSet, basename="work-queue")
router.register("agents", work_queues.AgentViewSet, basename="agent-read")
router.register("members", members.MemberViewSet, basename="member")
router.register("api_keys", members.ApiKeyViewSet, basename="api-key")
router.register("secrets", secrets.SecretViewSet, basename="secret")
router.register("audit", audit.AuditEntryViewSet, basename="audit-entry")
router.register("deletion_jobs", deletions.DeletionJobViewSet, basename="deletion-job")
router.register("automations", automations_api.AutomationViewSet, basename="automation")
router.register("deliveries", DeliveryViewSet, basename="delivery")


def by_prefix(router):
    """The router's patterns, an include per registered prefix: Django tries patterns in order, and a
    router's are regular expressions, each tried in turn (a run's set_state came after 23 of them,
    44 µs); a route without converters is skipped by comparing its text, so an include per prefix
    leaves a request a handful of comparisons and its own resource's few expressions. The URLs,
    their names and their order are the router's."""
    patterns = []
    for prefix, viewset, basename in router.registry:
        own = SimpleRouter()
        own.register("", viewset, basename=basename)
        patterns.append(path(f"{prefix}/", include(own.urls)))
    return patterns


# The workspace's prefix is matched once and the agents' endpoints (heartbeats, claims, reports: the
# hottest) are tried first: Django tries the patterns in order, and every pattern tried costs CPU.
workspace_patterns = [
    path("agent/", include("runs.api.agents")),
    path("ping", meta.PingView.as_view(), name="ping"),
    path("settings", members.WorkspaceSettingsView.as_view(), name="workspace-settings"),
    path("usage", usage.UsageView.as_view(), name="workspace-usage"),
    path("events/", events.EventListView.as_view(), name="event-list"),
    path("events/stream", events.EventStreamView.as_view(), name="event-stream"),
    *by_prefix(router),
    path("", include("events.api")),
]

urlpatterns = [
    path("accounts/<slug:account>/workspaces/<slug:workspace>/", include(workspace_patterns)),
]
