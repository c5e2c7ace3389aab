"""Who may do what, in one place: the role of a person or an API key in a workspace, what each
role may do, and which workspaces a person may see or change. The API's permission class, the
admin and the dashboard all ask this module; none of them decides on its own.

The roles:

- **viewer** reads the workspace: flows, schedules, runs, task runs, logs, queues, agents, settings.
- **operator** also acts on runs and schedules: runs flows now, pauses and resumes schedules and
  queues, cancels runs and sets their states, registers flows and versions.
- **admin** also changes definitions and the workspace itself: schedules, flows, queues, members,
  API keys and settings. A superuser is admin of every workspace.
- **agent** is for the machines that run flows. It is outside the viewer < operator < admin
  ladder: it may call the agents' endpoints (`<workspace>/agent/...`: register, heartbeat, claim,
  report states, task runs and logs) and nothing else, not even reads of the rest of the API;
  and no other role may call those endpoints. An agent key is always a service key (it acts for
  no person), and people cannot hold the role.

A view says the role an action needs (`required_role`, `action_roles`); `allows(role, required)`
is the whole rule.
"""

from automations.models import Automation, Delivery, Firing, TriggerBucket
from events.models import Event, IncomingWebhook
from runs.models import (
    Agent,
    ApiKey,
    AuditEntry,
    DeletionJob,
    Flow,
    FlowRun,
    FlowVersion,
    Log,
    Membership,
    Role,
    Schedule,
    Secret,
    StateChange,
    TaskRun,
    TaskRunUsage,
    WorkQueue,
    Workspace,
)

LADDER = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
_RANK = {role: rank for rank, role in enumerate(LADDER, start=1)}


def allows(role, required):
    """Whether `role` may do what needs `required`: on the ladder, `required` or above; the agents'
    endpoints (`required` agent) only the agent role, which may do nothing else."""
    if required == Role.AGENT or role == Role.AGENT:
        return role == required
    return _RANK.get(role, 0) >= _RANK[required]


def refusal(role, required):
    """Why `role` may not do what needs `required`, in words for a 403."""
    if required == Role.AGENT:
        return (f"Your role in this workspace is {role}; the agents' endpoints need an API key with the agent "
                f"role (issue one with role \"agent\").")
    if role == Role.AGENT:
        return "An agent key may call only the agents' endpoints (agent/...)."
    return f"Your role in this workspace is {role}; this action needs {required} or above."


def role_of(principal, workspace):
    """The role of `principal` (a person, or an authenticated ApiKey) in `workspace` (a Workspace
    or its id); None when it has none there.

    A superuser is admin everywhere. A key has a role only in its own workspace: the role it acts
    with (`acting_role`, set when it authenticated), else its own.
    """
    workspace_id = getattr(workspace, "pk", workspace)
    if isinstance(principal, ApiKey):
        if principal.workspace_id != workspace_id:
            return None
        return getattr(principal, "acting_role", principal.role)
    if not getattr(principal, "is_authenticated", False):
        return None
    if principal.is_superuser:
        return Role.ADMIN
    return Membership.objects.filter(user_id=principal.pk, workspace_id=workspace_id).values_list(
        "role", flat=True).first()


def personal_key_role(own, person_role):
    """The role a person's key acts with: its `own`, never more than the person has now (None: the
    person is no longer a member, the key does nothing)."""
    if person_role is None:
        return None
    if own == Role.AGENT:  # off the ladder: it never borrows the person's role
        return Role.AGENT
    return own if allows(person_role, own) else person_role


# --- workspaces a person may see or change ---------------------------------------------------

def workspace_ids(user, required):
    """Ids of the workspaces where `user` has a role that allows `required`; None means every
    workspace (a superuser). A person who is not logged in has none."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return set()
    if user.is_superuser:
        return None
    memberships = Membership.objects.filter(user_id=user.pk).values_list("workspace_id", "role")
    return {workspace_id for workspace_id, role in memberships if allows(role, required)}


def workspace_ids_for(request, required):
    """`workspace_ids(request.user, required)`, asked once per request and role."""
    cache = request.__dict__.setdefault("_workspace_ids_by_role", {})
    if required not in cache:
        cache[required] = workspace_ids(request.user, required)
    return cache[required]


def within(allowed, queryset, path="workspace_id"):
    """`queryset` narrowed to the workspace ids `allowed` (None: left whole); `path` leads from a
    row to its workspace id."""
    return queryset if allowed is None else queryset.filter(**{f"{path}__in": allowed})


def scoped(request, queryset, path="workspace_id", required=Role.VIEWER):
    """`queryset` narrowed to the workspaces where the request's user may do what needs `required`."""
    return within(workspace_ids_for(request, required), queryset, path)


def may(request, required, workspace_id):
    """Whether the request's user may do what needs `required` in workspace `workspace_id`."""
    allowed = workspace_ids_for(request, required)
    return allowed is None or workspace_id in allowed


# --- which workspace a row belongs to -------------------------------------------------------

# How each model's row leads to its workspace id: the admin scopes lists, forms and actions by it.
WORKSPACE_PATHS = {
    Workspace: "id",
    Membership: "workspace_id",
    ApiKey: "workspace_id",
    Flow: "workspace_id",
    FlowVersion: "flow__workspace_id",
    Schedule: "flow__workspace_id",
    FlowRun: "workspace_id",
    TaskRun: "flow_run__workspace_id",
    StateChange: "flow_run__workspace_id",
    Log: "workspace_id",
    WorkQueue: "workspace_id",
    Agent: "workspace_id",
    Event: "workspace_id",
    Secret: "workspace_id",
    AuditEntry: "workspace_id",
    DeletionJob: "workspace_id",
    Automation: "workspace_id",
    TriggerBucket: "automation__workspace_id",
    Firing: "workspace_id",
    Delivery: "workspace_id",
    IncomingWebhook: "workspace_id",
    TaskRunUsage: "workspace_id",
}


# What a viewer may not read: a workspace's members and API keys are for its admins.
# Secrets' names are for operators (their values for nobody); the audit trail for admins.
# Incoming webhooks' URLs are credentials: for admins.
# Deletion jobs name who deleted what, like the audit trail: for admins.
READ_ROLES = {Membership: Role.ADMIN, ApiKey: Role.ADMIN, Secret: Role.OPERATOR, AuditEntry: Role.ADMIN,
              IncomingWebhook: Role.ADMIN, DeletionJob: Role.ADMIN}


def read_role(model):
    """The role that may read the rows of `model` in a workspace."""
    return READ_ROLES.get(model, Role.VIEWER)


def workspace_path(model):
    """The lookup from a row of `model` to its workspace id; None for a model outside workspaces."""
    return WORKSPACE_PATHS.get(model)


def workspace_id_of(row):
    """The id of the workspace `row` belongs to (None when it has none yet)."""
    value = row
    for part in WORKSPACE_PATHS[type(row)].split("__"):
        if value is None:
            return None
        value = getattr(value, part, None)  # an unsaved row without its parent yet: None
    return value


def is_platform_admin(user):
    """Whether `user` may change what belongs to no workspace (accounts, new workspaces): superusers."""
    return bool(getattr(user, "is_active", False) and getattr(user, "is_superuser", False))
