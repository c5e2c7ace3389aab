"""Seed a demo workspace: account, workspace, admin user, a flow with two schedules, an agent-role key.

Safe to run again: it creates what is missing and changes nothing that exists.
"""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from runs.models import Account, ApiKey, Flow, Membership, Role, Schedule, ScheduleKind, Workspace, hash_api_key
from runs.scheduling import default_queues, schedule_future_runs

DEMO_ENTRYPOINT = "agent.examples.hello:hello"


def write_private(path, text):
    """Write `text` to `path`, readable by its owner only (it holds a password)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
    os.chmod(path, 0o600)


class Command(BaseCommand):
    help = "Create the demo account, workspace, admin user and flow (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--login-file", help="also write the new admin's login to this file (mode 600), for "
                                                 "`make run` to print again once everything has started")

    @transaction.atomic
    def handle(self, *args, username, login_file=None, **options):
        account, _ = Account.objects.get_or_create(slug="demo", defaults={"name": "Demo"})
        workspace, _ = Workspace.objects.get_or_create(account=account, slug="demo", defaults={"name": "Demo"})
        queue = default_queues([workspace.pk])[workspace.pk]

        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            password = os.environ.get("ORCHESTRATOR_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=username, email="", password=password)
            shown = "(from ORCHESTRATOR_ADMIN_PASSWORD)" if os.environ.get("ORCHESTRATOR_ADMIN_PASSWORD") else password
            self.stdout.write(self.style.SUCCESS(
                f"Admin login, shown this once: user {username!r}, password {shown}  → http://127.0.0.1:{os.environ.get('PORT') or 8000}/admin/"
            ))
            if login_file:
                write_private(login_file, f"Log in as user {username!r} with password {shown} (set when the demo "
                                          f"was seeded; {login_file} holds it, delete it once you have changed it).")
        Membership.objects.get_or_create(user=user, workspace=workspace, defaults={"role": Role.ADMIN})

        flow, created = Flow.objects.get_or_create(
            workspace=workspace, name="hello-orchestrator",
            defaults={"description": "The demo flow: greets, counts, and reports."},
        )
        if created or flow.latest_version is None:
            flow.register_version(entrypoint=DEMO_ENTRYPOINT, version="1", parameters={"name": "world"})
        Schedule.objects.get_or_create(
            flow=flow, slug="every-minute",
            defaults=dict(kind=ScheduleKind.INTERVAL, interval_seconds=60, work_queue=queue,
                          description="Says hello every minute."),
        )
        Schedule.objects.get_or_create(
            flow=flow, slug="business-hours",
            defaults=dict(kind=ScheduleKind.CRON, cron="*/5 9-17 * * 1-5", timezone="Europe/London", work_queue=queue,
                          parameters={"name": "London"}, description="Every 5 minutes in London office hours."),
        )
        made = schedule_future_runs(list(Schedule.objects.filter(flow=flow).select_related("flow")), timezone.now())
        self.stdout.write(f"Demo workspace demo/demo ready: flow {flow.name}, 2 schedules, {made} new run(s).")
        # The demo keeps the self-hosted default, no quota (ORCHESTRATOR_MONTHLY_TASK_RUN_QUOTA when set):
        # its flow completes about 4,500 task runs a day, so the hosted plan's 5,000 would stop it within
        # two days, which would look like a fault to someone trying the server.
        limit = workspace.monthly_task_run_quota
        self.stdout.write("Monthly task-run quota: " + (f"{limit:,}" if limit else "none") +
                          " (see /dashboard/usage/; an admin changes it there or in the workspace's settings).")
        self._local_agent_key(workspace)

    def _local_agent_key(self, workspace):
        """Issue the local agent's key (agent role: the agents' endpoints only) into var/agent.key
        (mode 600) unless a usable agent key is there. A key of another role written by an earlier
        version is revoked and replaced, since agent endpoints now refuse it."""
        path = settings.VAR_DIR / "agent.key"
        if path.exists():
            secret = path.read_text().strip()
            old = ApiKey.objects.usable().filter(workspace=workspace, hashed_secret=hash_api_key(secret))
            if old.filter(role=Role.AGENT).exists():
                return
            old.update(revoked_at=timezone.now())
        _, secret = ApiKey.issue(workspace=workspace, name="local-agent", role=Role.AGENT)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(secret + "\n")
        self.stdout.write(f"Local agent key (agent role) written to {path}.")
