from django.apps import AppConfig


class AutomationsConfig(AppConfig):
    name = "automations"
    verbose_name = "Automations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_save

        from automations import engine
        from automations.signals import give_new_workspace_its_defaults
        from events import persister
        from runs.models import Workspace

        persister.add_consumer(engine.on_events)
        post_save.connect(give_new_workspace_its_defaults, sender=Workspace,
                          dispatch_uid="automations.defaults_for_new_workspace")
