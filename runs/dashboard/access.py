"""Who sees what: the dashboard shows the workspaces where the user has a role, and lets
operators and admins act. The same rule as the admin (`workspace_ids_with_role`)."""

from runs.admin import workspace_ids_with_role
from runs.models import Role


def visible_workspace_ids(request):
    """Ids of the workspaces the user may read (None: every one). Asked once per request."""
    if not hasattr(request, "_dashboard_visible"):
        request._dashboard_visible = workspace_ids_with_role(request.user, Role.VIEWER)
    return request._dashboard_visible


def operable_workspace_ids(request):
    """Ids of the workspaces where the user may pause, resume and run (None: every one)."""
    if not hasattr(request, "_dashboard_operable"):
        request._dashboard_operable = workspace_ids_with_role(request.user, Role.OPERATOR)
    return request._dashboard_operable


def scoped(request, queryset, path="workspace_id"):
    """`queryset` narrowed to the user's workspaces; `path` leads from a row to its workspace id."""
    allowed = visible_workspace_ids(request)
    return queryset if allowed is None else queryset.filter(**{f"{path}__in": allowed})


def can_operate(request, workspace_id):
    """Whether the user may act (pause, resume, run now) in workspace `workspace_id`."""
    allowed = operable_workspace_ids(request)
    return allowed is None or workspace_id in allowed
