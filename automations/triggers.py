"""Triggers: what an automation watches for. Owned by the triggers work (wip/auto).

Contract used by others:
- `validate_trigger(data) -> dict`: the cleaned trigger, or raises django ValidationError whose
  message_dict names the field (e.g. {"trigger.within": ["…"]}).

Three kinds (README, "Automations"):
- reactive: `threshold` events matching `match` within `within` seconds (per resource with
  `for_each`). The window opens at the first event counted and closes `within` seconds later; an
  event after it opens a new one (the reference product's buckets). After a firing it starts over.
- proactive: an `after` event opens (or re-opens) a bucket with the deadline `occurred + within`;
  an `expect` event closes it; the proactive service fires the buckets whose deadline passed.
- compound: two of the above; fires when all (or any) of them fired within `within` seconds.

`Matcher` is a validated trigger made fast to match: patterns compiled once per batch.
"""

import fnmatch
import re

from django.core.exceptions import ValidationError

MAX_PATTERNS = 20
MAX_PATTERN_LENGTH = 200
MAX_WITHIN_SECONDS = 30 * 86_400
MAX_THRESHOLD = 10_000
FOR_EACH = ("resource",)
REQUIRE = ("all", "any")
POSTURES = ("reactive", "proactive")


class _Errors:
    """Collects problems by field, so one answer names every bad field."""

    def __init__(self):
        self.problems = {}

    def add(self, field, message):
        self.problems.setdefault(field, []).append(message)

    def raise_if_any(self):
        if self.problems:
            raise ValidationError(self.problems)


def _patterns(value, field, errors, *, required=False):
    if value is None:
        value = []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        errors.add(field, "must be a list of patterns (e.g. [\"flow-run.state.*\"])")
        return []
    if required and not value:
        errors.add(field, "needs at least one pattern")
    if len(value) > MAX_PATTERNS:
        errors.add(field, f"at most {MAX_PATTERNS} patterns")
        return []
    cleaned = []
    for i, pattern in enumerate(value):
        if not isinstance(pattern, str) or not pattern.strip():
            errors.add(f"{field}[{i}]", "must be a non-empty string")
        elif len(pattern) > MAX_PATTERN_LENGTH:
            errors.add(f"{field}[{i}]", f"at most {MAX_PATTERN_LENGTH} characters")
        elif "\x00" in pattern:
            errors.add(f"{field}[{i}]", "must not contain NUL characters")
        else:
            cleaned.append(pattern.strip())
    return cleaned


def _seconds(value, field, errors, *, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        errors.add(field, "must be a whole number of seconds")
        return minimum
    value = int(value)
    if value < minimum:
        errors.add(field, f"must be at least {minimum}")
    elif value > MAX_WITHIN_SECONDS:
        errors.add(field, f"at most {MAX_WITHIN_SECONDS} seconds (30 days)")
    return value


def _match(data, field, errors, *, name_required):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.add(field, "must be an object with name, resource_id, resource_kind, related")
        return {}
    unknown = set(data) - {"name", "resource_id", "resource_kind", "related"}
    for key in sorted(unknown):
        errors.add(f"{field}.{key}", "unknown filter; use name, resource_id, resource_kind or related")
    cleaned = {"name": _patterns(data.get("name"), f"{field}.name", errors, required=name_required)}
    for key in ("resource_id", "resource_kind"):
        given = data.get(key)
        if key == "resource_id" and isinstance(given, list):  # ids are text in events; 5 means "5"
            given = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in given]
        values = _patterns(given, f"{field}.{key}", errors)
        if values:
            cleaned[key] = values
    related = data.get("related") or []
    if not isinstance(related, list):
        errors.add(f"{field}.related", 'must be a list of {"kind": …, "id": …}')
        related = []
    if len(related) > MAX_PATTERNS:
        errors.add(f"{field}.related", f"at most {MAX_PATTERNS} resources")
        related = []
    refs = []
    for i, ref in enumerate(related):
        where = f"{field}.related[{i}]"
        if not isinstance(ref, dict) or set(ref) - {"kind", "id"} or "kind" not in ref:
            errors.add(where, 'must be {"kind": …, "id": …}')
            continue
        kind = _patterns([ref["kind"]], f"{where}.kind", errors)
        ids = _patterns([str(ref["id"]) if isinstance(ref.get("id"), int) else ref.get("id", "*")],
                        f"{where}.id", errors)
        if kind and ids:
            refs.append({"kind": kind[0], "id": ids[0]})
    if refs:
        cleaned["related"] = refs
    return cleaned


def _for_each(value, field, errors):
    if value in (None, "", False):
        return None
    if value not in FOR_EACH:
        errors.add(field, 'must be "resource" or null')
        return None
    return value


def _event_trigger(data, field, errors):
    posture = data.get("posture", "reactive")
    known = {"type", "posture", "match", "threshold", "within", "for_each", "after", "expect"}
    for key in sorted(set(data) - known):
        errors.add(f"{field}.{key}", "unknown field")
    if posture not in POSTURES:
        errors.add(f"{field}.posture", 'must be "reactive" or "proactive"')
        return {}
    if posture == "reactive":
        for key in ("after", "expect"):
            if key in data:
                errors.add(f"{field}.{key}", "only proactive triggers have it")
        threshold = data.get("threshold", 1)
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            errors.add(f"{field}.threshold", "must be a whole number")
            threshold = 1
        elif not 1 <= threshold <= MAX_THRESHOLD:
            errors.add(f"{field}.threshold", f"must be between 1 and {MAX_THRESHOLD}")
        within = _seconds(data.get("within", 0), f"{field}.within", errors,
                          minimum=1 if isinstance(threshold, int) and threshold > 1 else 0)
        return {"type": "event", "posture": "reactive",
                "match": _match(data.get("match"), f"{field}.match", errors, name_required=True),
                "threshold": threshold, "within": within,
                "for_each": _for_each(data.get("for_each"), f"{field}.for_each", errors)}
    if "threshold" in data:
        errors.add(f"{field}.threshold", "only reactive triggers have it")
    return {"type": "event", "posture": "proactive",
            "after": _patterns(data.get("after"), f"{field}.after", errors, required=True),
            "expect": _patterns(data.get("expect"), f"{field}.expect", errors, required=True),
            "match": _match(data.get("match"), f"{field}.match", errors, name_required=False),
            "within": _seconds(data.get("within"), f"{field}.within", errors, minimum=1),
            "for_each": _for_each(data.get("for_each"), f"{field}.for_each", errors)}


def _trigger(data, field, errors, *, nested):
    if not isinstance(data, dict):
        errors.add(field, "must be an object")
        return {}
    kind = data.get("type")
    if kind == "event":
        return _event_trigger(data, field, errors)
    if kind == "compound":
        if nested:
            errors.add(f"{field}.type", "a compound trigger's parts are event triggers")
            return {}
        for key in sorted(set(data) - {"type", "require", "triggers", "within"}):
            errors.add(f"{field}.{key}", "unknown field")
        require = data.get("require", "all")
        if require not in REQUIRE:
            errors.add(f"{field}.require", 'must be "all" or "any"')
        parts = data.get("triggers")
        if not isinstance(parts, list) or len(parts) != 2:
            errors.add(f"{field}.triggers", "must be a list of two event triggers")
            parts = []
        return {"type": "compound", "require": require,
                "triggers": [_trigger(part, f"{field}.triggers[{i}]", errors, nested=True)
                             for i, part in enumerate(parts)],
                "within": _seconds(data.get("within", 0), f"{field}.within", errors)}
    errors.add(f"{field}.type", 'must be "event" or "compound"')
    return {}


def validate_trigger(data):
    """The cleaned trigger (defaults filled in), or ValidationError naming each bad field."""
    errors = _Errors()
    cleaned = _trigger(data, "trigger", errors, nested=False)
    errors.raise_if_any()
    return cleaned


# --- matching --------------------------------------------------------------------------------------

def _compile(patterns):
    """One regex for a list of fnmatch patterns (case-sensitive); None matches everything."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def resource_key(resource):
    return f"{resource.get('kind', '')}:{resource.get('id', '')}"


class Matcher:
    """An event trigger ready to match events: `matches(event)`, `opens(event)`, `closes(event)`."""

    def __init__(self, trigger):
        self.trigger = trigger
        self.posture = trigger.get("posture", "reactive")
        match = trigger.get("match") or {}
        self.names = _compile(match.get("name"))
        self.resource_ids = _compile(match.get("resource_id"))
        self.resource_kinds = _compile(match.get("resource_kind"))
        self.related = [(_compile([ref["kind"]]), _compile([str(ref.get("id", "*"))]))
                        for ref in match.get("related") or []]
        self.after = _compile(trigger.get("after"))
        self.expect = _compile(trigger.get("expect"))
        self.for_each = trigger.get("for_each")
        self.within = int(trigger.get("within") or 0)
        self.threshold = int(trigger.get("threshold") or 1)

    def matches(self, event):
        """Whether the event passes the trigger's filters (for proactive ones also after/expect)."""
        if self.names is not None and not self.names.fullmatch(event.name):
            return False
        resource = event.resource or {}
        if self.resource_ids is not None and not self.resource_ids.fullmatch(str(resource.get("id", ""))):
            return False
        if self.resource_kinds is not None and not self.resource_kinds.fullmatch(str(resource.get("kind", ""))):
            return False
        for kind, id_ in self.related:
            if not any(kind.fullmatch(str(ref.get("kind", ""))) and id_.fullmatch(str(ref.get("id", "")))
                       for ref in event.related or [] if isinstance(ref, dict)):
                return False
        if self.posture == "proactive":
            return self.opens(event) or self.closes(event)
        return True

    def opens(self, event):
        return self.after is not None and bool(self.after.fullmatch(event.name))

    def closes(self, event):
        return self.expect is not None and bool(self.expect.fullmatch(event.name))

    def key(self, event):
        """The bucket an event counts in: its resource with for_each, else the one bucket."""
        return resource_key(event.resource or {}) if self.for_each else ""


def describe(trigger):
    """The trigger in words, for the dashboard."""
    try:
        if trigger.get("type") == "compound":
            parts = [describe(part) for part in trigger.get("triggers", [])]
            joiner = " and " if trigger.get("require") == "all" else " or "
            text = joiner.join(f"({part})" for part in parts)
            within = trigger.get("within")
            return f"{text}, within {_duration(within)} of each other" if within and trigger.get("require") == "all" \
                else text
        each = " (each resource apart)" if trigger.get("for_each") else ""
        if trigger.get("posture") == "proactive":
            return (f"no {_names(trigger.get('expect'))} within {_duration(trigger.get('within'))} "
                    f"after {_names(trigger.get('after'))}{each}")
        names = _names((trigger.get("match") or {}).get("name"))
        threshold = trigger.get("threshold", 1)
        if threshold == 1:
            return f"every {names}{each}"
        return f"{threshold} × {names} within {_duration(trigger.get('within'))}{each}"
    except (AttributeError, TypeError):
        return "(an invalid trigger)"


def _names(patterns):
    patterns = list(patterns or ["any event"])
    return " or ".join(patterns[:3]) + (f" (+{len(patterns) - 3} more)" if len(patterns) > 3 else "")


def _duration(seconds):
    seconds = int(seconds or 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
