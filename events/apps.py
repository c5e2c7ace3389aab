from django.apps import AppConfig
from django.db.models.signals import pre_delete


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from events.signals import delete_workspace_events
        from runs.models import Workspace

        pre_delete.connect(delete_workspace_events, sender=Workspace, dispatch_uid="events.delete_workspace_events")
