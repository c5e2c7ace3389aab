"""A workspace's secrets: values encrypted at rest (runs/vault.py), never shown again once written.

A flow version lists the secrets its runs need (`FlowVersion.secrets`); the claim that hands such
a run to an agent carries their values, which become environment variables of the run and are
redacted from its logs and messages. The API and the admin take a value and answer only its name,
who changed it and when.
"""

import logging

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from .validators import SECRET_NAME_PATTERN
from .workspaces import Workspace

logger = logging.getLogger(__name__)


class Secret(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(
        max_length=100, validators=[RegexValidator(SECRET_NAME_PATTERN, "Letters, digits and _, not first a digit.")],
        help_text="The environment variable it becomes in a run, e.g. DB_PASSWORD.",
    )
    ciphertext = models.TextField(editable=False, help_text="The value, encrypted (Fernet).")
    created = models.DateTimeField(default=timezone.now, editable=False)
    updated = models.DateTimeField(default=timezone.now, editable=False)
    updated_by = models.CharField(max_length=200, blank=True, editable=False,
                                  help_text="Who wrote the value last: a username or api-key:NAME.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="secret_name_unique")]
        ordering = ["name"]

    def __str__(self):
        return self.name

    def set_value(self, value, by, now=None):
        from runs import vault

        self.ciphertext = vault.encrypt(value)
        self.updated = now or timezone.now()
        self.updated_by = by[:200]


def secret_values(workspace_id, names):
    """{name: value} of the named secrets of a workspace that exist and can be decrypted (one query).

    One encrypted with a key no longer configured is left out (and logged): the runs that need it
    fail naming it, as if it were missing, instead of every claim failing.
    """
    from runs import vault

    if not names:
        return {}
    values = {}
    rows = Secret.objects.filter(workspace_id=workspace_id, name__in=set(names)).values_list("name", "ciphertext")
    for name, ciphertext in rows:
        try:
            values[name] = vault.decrypt(ciphertext)
        except vault.CannotDecrypt:
            logger.error("Secret %s of workspace %s cannot be decrypted with ORCHESTRATOR_SECRETS_KEY; runs that need "
                         "it fail until it is written again or its key is configured.", name, workspace_id)
    return values
