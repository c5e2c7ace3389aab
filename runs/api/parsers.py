"""Request bodies: JSON that carries NUL characters is refused as a 400.

PostgreSQL text cannot hold NUL, and zoneinfo/paths choke on it; refusing it at the door turns
what would be 500s deep in the stack into an answer the client can act on.
"""

from rest_framework import exceptions
from rest_framework.parsers import JSONParser


def contains_nul(value):
    """True when a string anywhere inside `value` (dicts, lists, keys) holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        if contains_nul(data):
            raise exceptions.ParseError("JSON strings must not contain NUL (\\u0000) characters.")
        return data
