"""Request bodies: strings that carry NUL characters are refused as a 400, whatever the media type.

PostgreSQL text cannot hold NUL, and zoneinfo/paths choke on it; refusing it at the door turns
what would be 500s deep in the stack into an answer the client can act on. Form bodies need the
same check as JSON ones: a fuzzer (or a hand-written curl) may send either.
"""

from django.http import QueryDict
from rest_framework import exceptions
from rest_framework.parsers import DataAndFiles, FormParser, JSONParser, MultiPartParser


def contains_nul(value):
    """True when a string anywhere inside `value` (dicts, lists, keys, form data) holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, QueryDict):
        return any(contains_nul(k) or contains_nul(values) for k, values in value.lists())
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(contains_nul(item) for item in value)
    return False


class RefusesNul:
    """Mixed into a parser: a body with a NUL character anywhere is a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        data = parsed.data if isinstance(parsed, DataAndFiles) else parsed
        if contains_nul(data):
            raise exceptions.ParseError("Strings in the request body must not contain NUL (\\u0000) characters.")
        return parsed


class StrictJSONParser(RefusesNul, JSONParser):
    pass


class StrictFormParser(RefusesNul, FormParser):
    pass


class StrictMultiPartParser(RefusesNul, MultiPartParser):
    pass
