"""The Django admin: every model, read-only history and logs, and role-checked actions.

Who may do what is decided in runs/access.py. Staff see the rows of the workspaces where they
have a role (superusers see all). Adding, changing or deleting a row needs the admin role in its
workspace, before and after the change: every reference a form offers is limited to the
workspaces the user administers, and a row whose references lie in another workspace than its
own is refused. The run and schedule actions need operator. Accounts and new workspaces are for
superusers.
"""

from . import flow_runs, flows, lifecycle, tenancy, workers  # noqa: F401  (each registers its models)
from .base import PlatformOnly, ReadOnlyInline, WorkspaceScopedAdmin, WorkspaceScopedForm

__all__ = ["PlatformOnly", "ReadOnlyInline", "WorkspaceScopedAdmin", "WorkspaceScopedForm"]
