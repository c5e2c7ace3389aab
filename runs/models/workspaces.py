"""Tenancy: accounts, workspaces, memberships with roles, and API keys."""

import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    """What a person or key may do in a workspace: see runs/access.py, which decides."""

    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ADMIN = "admin", "Admin"
    AGENT = "agent", "Agent (the agents' endpoints only)"


# People hold the roles of the ladder; the agent role is for API keys only.
PERSON_ROLE_CHOICES = [(role.value, role.label) for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN)]


class Account(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    created = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.name


def default_run_retention_days():
    """New workspaces keep finished runs this many days (ORCHESTRATOR_RUN_RETENTION_DAYS)."""
    return settings.ORCHESTRATOR["RUN_RETENTION_DAYS"]


class LiveManager(models.Manager):
    """The rows not marked deleted: a deleted flow, schedule or workspace is gone from every list
    (API, dashboard, admin, services) at once, while runs/deletion.py removes its rows in batches.
    `all_objects` still sees them; foreign keys (`run.flow`) still reach them."""

    def get_queryset(self):
        return super().get_queryset().filter(deleted_at__isnull=True)


def default_event_retention_days():
    """New workspaces keep events this many days (ORCHESTRATOR_EVENT_RETENTION_DAYS)."""
    return settings.ORCHESTRATOR["EVENT_RETENTION_DAYS"]


def default_monthly_task_run_quota():
    """New workspaces' quota of COMPLETED task runs a month (ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA; None: none)."""
    return settings.ORCHESTRATOR["MONTHLY_TASK_RUN_QUOTA"]


class Workspace(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="workspaces")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    run_retention_days = models.PositiveIntegerField(
        default=default_run_retention_days, validators=[MinValueValidator(1), MaxValueValidator(36500)],
        help_text="Finished runs are deleted with their task runs, history and logs this many days after they ended.",
    )
    log_retention_days = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(36500)],
        help_text="Logs of finished runs are deleted this many days after they were written (empty: with their run). "
                  "At most the run retention.",
    )
    event_retention_days = models.PositiveIntegerField(
        default=default_event_retention_days, validators=[MinValueValidator(1), MaxValueValidator(3650)],
        help_text="Events are deleted after this many days (the partition manager drops whole days).",
    )
    monthly_task_run_quota = models.PositiveIntegerField(
        null=True, blank=True, default=default_monthly_task_run_quota, validators=[MinValueValidator(1)],
        help_text="Successful (COMPLETED) task runs a calendar month (UTC) may count before agents claim no new "
                  "runs until the next month; empty: no quota.",
    )
    created = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False,
                                      help_text="Marked deleted; its rows are being deleted in the background.")

    objects = LiveManager()
    all_objects = models.Manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "slug"], condition=models.Q(deleted_at__isnull=True),
                                               name="workspace_slug_unique")]
        base_manager_name = "all_objects"

    def __str__(self):
        return f"{self.account.slug}/{self.slug}"

    def clean(self):
        if self.log_retention_days and self.run_retention_days and self.log_retention_days > self.run_retention_days:
            raise ValidationError({"log_retention_days": "Logs cannot be kept longer than their runs: pick at most "
                                                         f"{self.run_retention_days} days, or leave it empty."})

    def retention_sentence(self):
        """How long history is kept, in words (the dashboard and the API say it)."""
        runs = f"Finished runs are kept {self.run_retention_days} days"
        if self.log_retention_days and self.log_retention_days < self.run_retention_days:
            return f"{runs}; their logs {self.log_retention_days} days."
        return f"{runs}, with their logs."


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=PERSON_ROLE_CHOICES, default=Role.VIEWER)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "workspace"], name="membership_unique")]

    def __str__(self):
        return f"{self.user} is {self.role} of {self.workspace}"


def hash_api_key(secret):
    """The stored form of an API key. Keys are 256 random bits, so a plain SHA-256 is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self, now=None):
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A bearer key scoped to one workspace with one role. Only its hash is stored."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys",
        help_text="The person the key acts for; empty for a service key (an agent, a CI job).",
    )
    name = models.CharField(max_length=200)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.OPERATOR)
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    hashed_secret = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, *, workspace, name, role=Role.OPERATOR, user=None, expires_at=None):
        """Create a key; returns (key, secret). The secret is shown once and never stored."""
        token = secrets.token_urlsafe(32)
        secret = f"orch_{token}"
        key = cls.objects.create(
            workspace=workspace, user=user, name=name, role=role, expires_at=expires_at,
            prefix=secret[: 5 + settings.ORCHESTRATOR["API_KEY_PREFIX_LENGTH"]],
            hashed_secret=hash_api_key(secret),
        )
        return key, secret

    def clean(self):
        from runs.access import role_of

        # A key acting for a person works only while that person is a member (see the API's
        # authentication); one made for an outsider could never be used.
        if self.user_id and self.workspace_id and role_of(self.user, self.workspace_id) is None:
            raise ValidationError({"user": "This person is not a member of the key's workspace; add them first, "
                                           "or leave the person empty for a service key."})
        if self.user_id and self.role == Role.AGENT:
            raise ValidationError({"user": "An agent key acts for no person: leave the person empty."})

    @property
    def is_usable(self):
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
