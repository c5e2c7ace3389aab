"""Roles per workspace: the workspace comes from the URL, the role from the key or the membership,
and runs/access.py decides what the role may do."""

from rest_framework import exceptions, permissions

from runs import access
from runs.models import ApiKey, Role, Workspace
from runs.run_tokens import RunGrant

from .key_cache import copied_workspace, known_workspaces

# request.role of a caller authenticated by a flow run's report token.
RUN_TOKEN_ROLE = "run"


def resolve_workspace(account_slug, workspace_slug):
    try:
        return Workspace.objects.select_related("account").get(account__slug=account_slug, slug=workspace_slug)
    except Workspace.DoesNotExist:
        raise exceptions.NotFound("No such workspace.") from None


def known_workspace(workspace_id, account_slug, workspace_slug):
    """The workspace a flow run's report token names (`workspace_id`), when it is the one the URL
    names and is not being deleted; else NotFound. Kept in the process as verified keys are
    (runs/api/key_cache.py), so a report needs no query to find its workspace. Shared by the
    process's requests: read it, or take `granted_workspace`'s copy."""
    workspace = known_workspaces.get(workspace_id)
    if workspace is None:
        workspace = Workspace.objects.select_related("account").filter(pk=workspace_id).first()
        if workspace is None:
            raise exceptions.NotFound("No such workspace.")
        known_workspaces.remember(workspace_id, workspace)
    if workspace.slug != workspace_slug or workspace.account.slug != account_slug:
        raise exceptions.NotFound("No such workspace.")
    return workspace


def granted_workspace(workspace_id, account_slug, workspace_slug):
    """known_workspace's, copied for one request to hold: what it changes never reaches another."""
    return copied_workspace(known_workspace(workspace_id, account_slug, workspace_slug))


def workspace_in_url(request, account_slug, workspace_slug):
    """The workspace the URL names. An API key's own workspace came with the key (one query for
    both), which matters on the hottest paths: heartbeats, claims, state reports."""
    key = request.auth
    if isinstance(key, ApiKey) and key.workspace.slug == workspace_slug and key.workspace.account.slug == account_slug:
        if key.workspace.deleted_at is not None:  # being deleted: gone, as for any other caller
            raise exceptions.NotFound("No such workspace.")
        return key.workspace
    return resolve_workspace(account_slug, workspace_slug)


def role_in_workspace(user, auth, workspace):
    """The caller's role in `workspace`, or None when it has none there: the key's when it came
    with one, else the person's."""
    return access.role_of(auth if isinstance(auth, ApiKey) else user, workspace)


class WorkspaceRolePermission(permissions.BasePermission):
    """Viewers read; the view's `required_role` or `action_roles` say which role other actions need,
    and `access.allows` whether the caller's role is enough (the agent role only for the agents'
    endpoints, whose `required_role` is agent).

    A workspace the caller has no role in answers 404, as if it did not exist, so that names of
    other tenants' workspaces do not leak.
    """

    def has_permission(self, request, view):
        if any("\x00" in value for values in request.query_params.lists() for value in values[1]):
            raise exceptions.ParseError("Query parameters must not contain NUL characters.")
        if "workspace" not in view.kwargs:
            return bool(request.user and request.user.is_authenticated)
        if not (request.user and request.user.is_authenticated):
            raise exceptions.NotAuthenticated()
        run_scoped = getattr(view, "run_scoped", False)
        if isinstance(request.auth, RunGrant):
            # Which run the token may report for is the view's to check, against the row itself.
            if not run_scoped:
                raise exceptions.PermissionDenied(
                    "A run's report token reports for its run only; this endpoint needs an API key.")
            workspace = granted_workspace(request.auth.workspace_id, view.kwargs["account"], view.kwargs["workspace"])
            request.workspace, request.role = workspace, RUN_TOKEN_ROLE
            return True
        if run_scoped:
            raise exceptions.PermissionDenied(
                "Only the claimant of a run reports for it: authenticate with the run's report token "
                "(the `token` of the run in the claim answer), not an API key.")
        workspace = workspace_in_url(request, view.kwargs["account"], view.kwargs["workspace"])
        role = role_in_workspace(request.user, request.auth, workspace)
        if role is None:
            raise exceptions.NotFound("No such workspace.")
        request.workspace, request.role = workspace, role
        required = self.required_role(request, view)
        if not access.allows(role, required):
            raise exceptions.PermissionDenied(access.refusal(role, required))
        return True

    @staticmethod
    def required_role(request, view):
        """The view's `required_role` for all it does, else `action_roles` per action, else viewer
        for reads and admin for writes."""
        if getattr(view, "required_role", None):
            return view.required_role
        action = getattr(view, "action", None)
        roles = getattr(view, "action_roles", {})
        if action in roles:
            return roles[action]
        if request.method in permissions.SAFE_METHODS:
            return Role.VIEWER
        return Role.ADMIN
