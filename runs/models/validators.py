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


# A secret's name is the environment variable it becomes in a run: letters, digits and _, not first a digit.
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
MAX_SECRETS_PER_VERSION = 100


def secret_names(value):
    """A list of secret names, e.g. ["DB_PASSWORD", "S3_KEY"], as a flow version references them."""
    import re

    if not isinstance(value, list):
        raise ValidationError('Must be a list of secret names, e.g. ["DB_PASSWORD"].', code="not_a_list")
    if len(value) > MAX_SECRETS_PER_VERSION:
        raise ValidationError(f"At most {MAX_SECRETS_PER_VERSION} secrets.", code="too_many")
    bad = [name for name in value if not isinstance(name, str) or not re.fullmatch(SECRET_NAME_PATTERN, name)]
    if bad:
        raise ValidationError(f"Not a secret name (letters, digits and _, up to 100, not starting with a digit): "
                              f"{', '.join(map(str, bad[:5]))}.", code="bad_name")
