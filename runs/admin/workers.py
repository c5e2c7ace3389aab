"""Work queues and agents."""

from django.contrib import admin

from runs.models import Agent, WorkQueue

from .base import WorkspaceScopedAdmin, age


@admin.register(WorkQueue)
class WorkQueueAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "workspace", "work_pool", "concurrency_limit", "paused", "polled"]
    list_filter = ["paused", "workspace"]
    search_fields = ["name", "work_pool"]

    @admin.display(description="Last polled", ordering="last_polled")
    def polled(self, queue):
        return age(queue.last_polled)


@admin.register(Agent)
class AgentAdmin(WorkspaceScopedAdmin):
    list_display = ["name", "workspace", "status", "heartbeat", "version"]
    list_filter = ["status", "workspace"]
    search_fields = ["name"]
    filter_horizontal = ["queues"]

    @admin.display(description="Last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, agent):
        return age(agent.last_heartbeat)
