"""Actions: what an automation does when it fires. Owned by the actions work (wip/actions).

Contract used by others:
- `validate_actions(data, workspace) -> list`: the cleaned actions, or raises django ValidationError
  whose message_dict names the field (e.g. {"actions[0].url": ["…"]}).
- `run_actions(automation, firing, context, now) -> list`: runs the automation's actions inside
  the caller's transaction, each in its own savepoint (one failing action never stops the others),
  and returns one result per action: {"type", "ok", "detail"}. Outgoing messages are queued as
  Delivery rows, never sent here. `context`: {"events": [events.models.Event], "resource": dict or
  None (the resource the firing is about), "reason": str}.
"""

from django.core.exceptions import ValidationError


def validate_actions(data, workspace):
    if not isinstance(data, list):
        raise ValidationError({"actions": ["must be a list"]})
    return data


def run_actions(automation, firing, context, now):
    return []
