"""Request bodies: strings no database can store are refused as a 400, whatever the media type.

PostgreSQL text cannot hold NUL, and zoneinfo/paths choke on it; a lone UTF-16 surrogate
(JSON's "\ud800") is valid JSON but cannot be encoded as UTF-8 by either database driver.
Refusing both at the door turns what would be 500s deep in the stack into an answer the client
can act on. Form bodies need the same check as JSON ones: a client may send either.
"""

import re

from django.http import QueryDict
from rest_framework import exceptions
from rest_framework.parsers import DataAndFiles, FormParser, JSONParser, MultiPartParser

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(value):
    """True when a string anywhere inside `value` (dicts, lists, keys, form data) holds a NUL
    character or a lone surrogate."""
    if isinstance(value, str):
        return UNSTORABLE.search(value) is not None
    if isinstance(value, QueryDict):
        return any(unstorable(k) or unstorable(values) for k, values in value.lists())
    if isinstance(value, dict):
        return any(unstorable(k) or unstorable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(unstorable(item) for item in value)
    return False


class RefusesUnstorable:
    """Mixed into a parser: a body with a NUL character or a lone surrogate anywhere is a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        data = parsed.data if isinstance(parsed, DataAndFiles) else parsed
        if unstorable(data):
            raise exceptions.ParseError("Strings in the request body must not contain NUL (\\u0000) characters "
                                        "or lone surrogates (\\ud800-\\udfff).")
        return parsed


class StrictJSONParser(RefusesUnstorable, JSONParser):
    pass


class StrictFormParser(RefusesUnstorable, FormParser):
    pass


class StrictMultiPartParser(RefusesUnstorable, MultiPartParser):
    pass
