from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _apply_service_intervals(sender, **kwargs):
    from services.beat import apply_after_migrate

    apply_after_migrate(sender, **kwargs)


class ServicesConfig(AppConfig):
    name = "services"
    verbose_name = "Background services"

    def ready(self):
        # After every `migrate` the beat rows take the environment's intervals (services/beat.py).
        post_migrate.connect(_apply_service_intervals, sender=self, dispatch_uid="services.apply_service_intervals")
