"""Request bodies: what no database can store, or no code can walk, is refused as a 400 at the door.

- PostgreSQL text cannot hold NUL, and zoneinfo/paths choke on it; a lone UTF-16 surrogate
  (JSON's "\\ud800") is valid JSON but cannot be encoded as UTF-8 by either database driver.
- Nesting: Python's json, DRF's fields, json.dumps on the way to the database and the renderer all
  recurse, so a body ~1,000 levels deep raised RecursionError (a 500) wherever it got first. A
  body deeper than ORCHESTRATOR["API_MAX_JSON_DEPTH"] levels is refused, whatever depth Python's
  stack would still have allowed, and the checks here walk with a list, never by recursion.
- Numbers: `1e400` parses as an infinite float, which jsonb refuses (a 500 on PostgreSQL, a CHECK
  failure on SQLite); an integer past Python's int-string limit (4,300 digits) cannot be parsed.
- Form and multipart bodies get the same checks, including their fields that hold JSON text (a
  form-encoded `calendar` or `parameters`): the serializer field would json.loads it later.

Refusing at the door turns what would be 500s deep in the stack into an answer the client can act on.
"""

import json
import math
import re
import sys

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import QueryDict
from rest_framework import exceptions
from rest_framework.parsers import DataAndFiles, FormParser, JSONParser, MultiPartParser

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_MESSAGE = ("Strings in the request body must not contain NUL (\\u0000) characters "
                      "or lone surrogates (\\ud800-\\udfff).")
NOT_FINITE_MESSAGE = "Numbers in the request body must be finite: NaN, Infinity and values beyond ±1.7e308 are refused."


def too_deep_message(where="The request body"):
    limit = settings.ORCHESTRATOR["API_MAX_JSON_DEPTH"]
    return (f"{where} nests objects and arrays more than {limit} levels deep; at most {limit} are accepted "
            f"(ORCHESTRATOR_API_MAX_JSON_DEPTH).")


def refusal(value, where="The request body", scalars=True):
    """Why `value` (parsed JSON, form data) cannot be taken, or None: nesting past the limit, a NUL
    or lone surrogate in a string or key, a number that is not finite. Walks without recursion, so
    a structure of any depth costs a list, not the stack. With `scalars=False` only the nesting is
    judged, and only the containers are walked (`loads`, when the text shows its strings are fine)."""
    limit = settings.ORCHESTRATOR["API_MAX_JSON_DEPTH"]
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                return UNSTORABLE_MESSAGE
        elif isinstance(item, float):
            if not math.isfinite(item):
                return NOT_FINITE_MESSAGE
        elif isinstance(item, (dict, list, tuple, QueryDict)):
            if depth > limit:
                return too_deep_message(where)
            if isinstance(item, QueryDict):
                parts = (part for key, values in item.lists() for part in (key, *values))
            elif isinstance(item, dict):
                parts = (part for pair in item.items() for part in pair) if scalars else item.values()
            else:
                parts = item
            pending.extend((part, depth + 1) for part in parts
                           if scalars or isinstance(part, (dict, list)))
    return None


# In JSON text a NUL or a lone surrogate arrives as an escape, or raw when the body's charset made
# it so. Text with neither needs no look at its strings; one that has the letters (even inside an
# escaped backslash) gets the whole walk.
SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _refuse_constant(name):
    raise exceptions.ParseError(NOT_FINITE_MESSAGE)


def _finite_float(text):
    number = float(text)
    if not math.isfinite(number):  # 1e400 and its like overflow to inf
        raise exceptions.ParseError(NOT_FINITE_MESSAGE)
    return number


def _bounded_int(text):
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        raise exceptions.ParseError(f"Numbers in the request body may have at most {limit} digits.")
    return int(text)


def loads(text, where="The request body"):
    """json.loads that refuses NaN/Infinity, numbers it cannot hold, and nesting past the limit,
    each as a ParseError (a 400) instead of a RecursionError or a value the database refuses."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:  # the C scanner stops cleanly at Python's recursion limit
        raise exceptions.ParseError(too_deep_message(where)) from None
    # Every string is looked at only when the text has a suspect escape or the raw characters (a body
    # sent as charset=unicode_escape, a codec Django accepts, arrives with its escapes turned into
    # characters); else numbers were judged while parsing and only the depth is left, a walk over the
    # containers alone (a 500-line log batch: ~0.3 ms instead of ~10).
    problem = refusal(value, where, scalars=bool(SUSPECT_ESCAPE.search(text) or UNSTORABLE.search(text)))
    if problem:
        raise exceptions.ParseError(problem)
    return value


def _refuse_bodies_over_the_limit(parser_context):
    """Multipart bodies are not all held in memory, so Django does not bound their file parts;
    refuse any body whose declared size is over the limit before reading it (413, errors.py)."""
    request = (parser_context or {}).get("request")
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
    except ValueError:
        declared = 0
    if limit is not None and declared > limit:
        raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")


class StrictJSONParser(JSONParser):
    """JSON bodies through `loads`: bounded nesting, finite numbers, storable strings."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding)
        except UnicodeDecodeError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        try:
            return loads(text)
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


class RefusesUnstorableForm:
    """Mixed into a form parser: the checks of `refusal` on every field, and on the JSON that a
    field holds (a form-encoded `calendar` or `parameters`), naming the field."""

    def parse(self, stream, media_type=None, parser_context=None):
        _refuse_bodies_over_the_limit(parser_context)
        parsed = super().parse(stream, media_type, parser_context)
        data = parsed.data if isinstance(parsed, DataAndFiles) else parsed
        problem = refusal(data)
        if problem:
            raise exceptions.ParseError(problem)
        for name, values in data.lists():
            for value in values:
                if value.lstrip()[:1] in ("{", "["):
                    try:
                        loads(value, where="The JSON in this field")
                    except ValueError:
                        pass  # not JSON: the serializer field judges it
                    except exceptions.ParseError as refused:
                        raise exceptions.ValidationError({name: [str(refused.detail)]}) from None
        return parsed


class StrictFormParser(RefusesUnstorableForm, FormParser):
    pass


class StrictMultiPartParser(RefusesUnstorableForm, MultiPartParser):
    pass
