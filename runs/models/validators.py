"""Shapes the JSON fields must have: the agent merges parameters and environments as objects, so a
list or a string stored there would break every later claim of the run's queue."""

from django.core.exceptions import ValidationError


def json_object(value):
    """A JSON object ({...}), e.g. a flow's parameters."""
    if not isinstance(value, dict):
        raise ValidationError("Must be a JSON object, e.g. {\"day\": \"monday\"}.", code="not_an_object")


def environment(value):
    """Environment variables: an object whose values are strings, numbers or booleans."""
    json_object(value)
    nested = sorted(name for name, setting in value.items() if isinstance(setting, (dict, list)) or setting is None)
    if nested:
        raise ValidationError(f"Environment values must be strings or numbers; not {', '.join(nested)}.",
                              code="not_a_value")
