from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Orchestration"

    def ready(self):
        from django.core import checks

        from runs.vault import check_secrets_key

        checks.register(check_secrets_key, checks.Tags.security, deploy=True)
        self.forget_verified_keys_on_changes()

    @staticmethod
    def forget_verified_keys_on_changes():
        """A change to a key, its workspace or account, a membership or a person in this process
        empties the caches of verified API keys and known workspaces at once (other processes: within its time to live)."""
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from runs.api.key_cache import forget_everything
        from runs.models import Account, ApiKey, Membership, Workspace

        for model in (ApiKey, Workspace, Account, Membership, get_user_model()):
            for signal in (post_save, post_delete):
                signal.connect(forget_everything, sender=model, weak=False,
                               dispatch_uid=f"forget-verified-keys-{signal is post_save}-{model._meta.label}")
