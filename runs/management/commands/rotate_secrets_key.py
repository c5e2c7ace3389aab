"""Re-encrypt every workspace secret with the first key of ORCHESTRATOR_SECRETS_KEY.

Rotation: put the new key first in ORCHESTRATOR_SECRETS_KEY (keeping the old one after it),
restart web and workers, run this, then drop the old key. Safe to run again or twice at once:
each batch is locked while it is re-encrypted, so a value written meanwhile is never replaced.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from runs import vault
from runs.models import Secret

BATCH = 500


class Command(BaseCommand):
    help = "Re-encrypt every secret with the first key of ORCHESTRATOR_SECRETS_KEY (after adding a new key)."

    def handle(self, *args, **options):
        total = Secret.objects.count()
        done, last_pk, unreadable = 0, 0, []
        while True:
            with transaction.atomic():
                batch = list(Secret.objects.select_for_update().filter(pk__gt=last_pk).order_by("pk")[:BATCH])
                if not batch:
                    break
                for secret in batch:
                    try:
                        secret.ciphertext = vault.reencrypt(secret.ciphertext)
                    except vault.CannotDecrypt:
                        unreadable.append(f"{secret.workspace_id}/{secret.name}")
                Secret.objects.bulk_update(batch, ["ciphertext"])
            last_pk, done = batch[-1].pk, done + len(batch)
            self.stdout.write(f"Re-encrypted {done - len(unreadable)} of {total} secret(s)…")
        if unreadable:
            raise CommandError(f"{len(unreadable)} secret(s) no configured key can decrypt (workspace id/name): "
                               f"{', '.join(unreadable[:20])}. Add the key they were written with, or write them again.")
        self.stdout.write(self.style.SUCCESS(f"Done: {done} secret(s) now encrypted with the first key."))
