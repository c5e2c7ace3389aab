"""Flows and their versions."""

from django.db import models, transaction
from django.utils import timezone

from .validators import environment, json_object, secret_names
from .workspaces import LiveManager, Workspace


class Flow(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="flows")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False,
                                      help_text="Marked deleted; its rows are being deleted in the background.")

    objects = LiveManager()
    all_objects = models.Manager()

    class Meta:
        # A deleted flow's name is free at once: its rows may take minutes to go.
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], condition=models.Q(deleted_at__isnull=True),
                                               name="flow_name_unique")]
        ordering = ["name"]
        base_manager_name = "all_objects"

    def __str__(self):
        return self.name

    @property
    def latest_version(self):
        return self.versions.filter(is_latest=True).first()

    def register_version(self, *, entrypoint, version="", parameters=None, job_env=None, secrets=None):
        """Add a version and promote it to latest; earlier versions are archived (a schedule pinned to
        one keeps running it)."""
        from runs.versions import repoint_following_runs

        with transaction.atomic():
            self.versions.filter(is_latest=True).update(is_latest=False, archived=True)
            created = self.versions.create(
                entrypoint=entrypoint, version=version or "", parameters=parameters or {},
                job_env=job_env or {}, secrets=list(dict.fromkeys(secrets or [])), is_latest=True,
            )
            # Waiting runs of the schedules that follow the latest now show (and, claimed, run) this one.
            repoint_following_runs(self.pk, created.pk)
            return created


class FlowVersion(models.Model):
    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=100, blank=True, help_text="A label such as a git sha or 1.4.2.")
    entrypoint = models.CharField(max_length=500, help_text="module:function, imported by the agent.")
    parameters = models.JSONField(default=dict, blank=True, validators=[json_object],
                                  help_text="Default parameters of the flow.")
    job_env = models.JSONField(
        default=dict, blank=True, validators=[environment],
        help_text="Environment variables set for every run of this version.",
    )
    secrets = models.JSONField(
        default=list, blank=True, validators=[secret_names],
        help_text="Names of the workspace's secrets its runs get as environment variables, e.g. [\"DB_PASSWORD\"].",
    )
    is_latest = models.BooleanField(default=False)
    archived = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # At most one latest version per flow, whatever the races between two registrations.
            models.UniqueConstraint(fields=["flow"], condition=models.Q(is_latest=True), name="one_latest_version"),
        ]
        ordering = ["-created"]
        indexes = [
            # A flow's versions newest first, in pages: a flow registered on every deploy has thousands.
            models.Index(fields=["flow", "-created", "-id"], name="flowversion_flow_newest"),
        ]

    def __str__(self):
        return f"{self.flow.name} {self.version or self.pk}"
