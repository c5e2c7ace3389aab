"""Issue an API key from the server's shell: the first key of a workspace, without a browser.

Prints only the secret on standard output (shown this once; only its hash is stored), so that
`KEY=$(python manage.py create_api_key acme/prod --name ci --role admin)` works in scripts.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from runs import actions
from runs.audit import Who
from runs.models import Role, Workspace


class Command(BaseCommand):
    help = "Issue an API key for a workspace (ACCOUNT/WORKSPACE) and print its secret once."

    def add_arguments(self, parser):
        parser.add_argument("workspace", help="account/workspace slugs, e.g. demo/demo")
        parser.add_argument("--name", required=True, help="what the key is for, e.g. ci")
        parser.add_argument("--role", default=Role.OPERATOR, choices=Role.values,
                            help="what the key may do (runs/access.py); agent: an agent's key, the agents' endpoints only")
        parser.add_argument("--expires-in-days", type=int, default=None,
                            help="the key stops working after this many days (default: never)")

    def handle(self, *args, workspace, name, role, expires_in_days, **options):
        account_slug, _, workspace_slug = workspace.partition("/")
        target = Workspace.objects.filter(account__slug=account_slug, slug=workspace_slug).first()
        if not workspace_slug or target is None:
            known = ", ".join(str(w) for w in Workspace.objects.select_related("account").order_by("account__slug",
                                                                                                   "slug")[:20])
            raise CommandError(f"No workspace {workspace!r}; give it as ACCOUNT/WORKSPACE (known: {known or 'none'}).")
        if expires_in_days is not None and expires_in_days < 1:
            raise CommandError("--expires-in-days must be at least 1.")
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        key, secret = actions.issue_key(target, name=name, role=role, expires_at=expires_at,
                                        who=Who.command("create_api_key"))
        self.stderr.write(f"Key {key.prefix}… ({role}) for {target}; the secret below is shown this once.")
        self.stdout.write(secret)
