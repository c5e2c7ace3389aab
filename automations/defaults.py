"""The automations every workspace gets, on (but one) and editable.

Made for a new workspace when it is created (a post_save signal) and for the workspaces that
existed before (migration 0002_triggers_defaults). Idempotent by (workspace, default_key): a
default already there, edited or disabled, is left alone; one that was deleted is not brought
back by a later workspace save (only creation and the migration make them).
"""

# The heartbeat trigger: a run that beats must beat again, or end, within 5 min. Only a heartbeat
# opens the wait: a run whose agent sends none (heartbeat_mode off) is never judged by silence here
# (the Zombie Killer judges those from their start, with its own threshold).
CRASH_SILENT_RUNS = {
    "type": "event", "posture": "proactive",
    "after": ["flow-run.heartbeat"],
    "expect": ["flow-run.heartbeat", "flow-run.state.completed", "flow-run.state.failed",
               "flow-run.state.cancelled", "flow-run.state.crashed", "flow-run.state.cancelling",
               "flow-run.state.scheduled"],
    "match": {"name": [], "resource_kind": ["flow-run"]},
    "within": 300, "for_each": "resource",
}

DEFAULTS = [
    {"default_key": "crash-silent-runs", "name": "Crash runs without a heartbeat", "enabled": True,
     "description": "A flow run that sent heartbeats, then none (and did not finish) for 5 minutes, is marked CRASHED.",
     "trigger": CRASH_SILENT_RUNS, "actions": [{"type": "mark-crashed"}]},
    {"default_key": "notify-failed-runs", "name": "Notify when a run fails or crashes", "enabled": False,
     "description": "E-mails when a flow run fails or crashes. Add a destination, then enable it.",
     "trigger": {"type": "event", "posture": "reactive",
                 "match": {"name": ["flow-run.state.failed", "flow-run.state.crashed"]},
                 "threshold": 1, "within": 0, "for_each": None},
     "actions": [{"type": "send-email", "to": []}]},
    {"default_key": "service-failing", "name": "Alert when a service keeps failing", "enabled": True,
     "description": "E-mails the workspace's admins when a background service failed 3 times within an hour.",
     "trigger": {"type": "event", "posture": "reactive", "match": {"name": ["service.failed"]},
                 "threshold": 3, "within": 3600, "for_each": "resource"},
     "actions": [{"type": "send-email", "to": ["admins"]}]},
]


def create_defaults(workspace_ids, automation_model=None, now=None):
    """Give each workspace of `workspace_ids` the defaults it lacks; returns how many were made.

    `automation_model`: the historical model when a migration calls this."""
    import copy

    from django.utils import timezone

    if automation_model is None:
        from automations.models import Automation as automation_model
    workspace_ids = list(workspace_ids)
    if not workspace_ids:
        return 0
    now = now or timezone.now()
    have = set(automation_model.objects.filter(workspace_id__in=workspace_ids)
               .exclude(default_key="").values_list("workspace_id", "default_key"))
    missing = [automation_model(workspace_id=ws_id, created=now, updated=now, **copy.deepcopy(default))
               for ws_id in workspace_ids for default in DEFAULTS if (ws_id, default["default_key"]) not in have]
    # A workspace whose own automation already has a default's name keeps its own (ignore_conflicts).
    automation_model.objects.bulk_create(missing, ignore_conflicts=True)
    return len(missing)
