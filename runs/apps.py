from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Orchestration"

    def ready(self):
        from django.core import checks

        from runs.vault import check_secrets_key

        checks.register(check_secrets_key, checks.Tags.security, deploy=True)
