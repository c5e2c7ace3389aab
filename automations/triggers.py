"""Triggers: what an automation watches for. Owned by the triggers work (wip/auto).

Contract used by others:
- `validate_trigger(data) -> dict`: the cleaned trigger, or raises django ValidationError whose
  message_dict names the field (e.g. {"trigger.within": ["…"]}).
"""

from django.core.exceptions import ValidationError


def validate_trigger(data):
    if not isinstance(data, dict):
        raise ValidationError({"trigger": ["must be an object"]})
    return data
