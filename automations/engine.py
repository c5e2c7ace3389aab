"""The trigger engine: reactive triggers on ingest, proactive ones on silence, compounds of two.

`on_events(events, now)` is an event persister consumer (events/persister.py): it runs inside the
transaction that stored a batch, with the batch's new events, whatever their workspaces. It is
set-based: one query loads the enabled automations of the batch's workspaces, matching is done in
Python, the buckets it needs are read in one query and written back in bulk (one DELETE, one
upsert), and the firings of the batch are created in one INSERT. One automation whose evaluation
raises (say a trigger stored before validation existed) is logged and skipped; the others go on.

`fire_many` creates Firing rows, sets `Automation.last_fired`, calls the actions contract
(`automations.actions.run_actions`) and emits an `automation.fired` event per firing. An
automation never reacts to its own `automation.fired` events (the loop guard).

Time is a parameter: windows are measured on the events' `occurred`, firings are stamped `now`.
"""

import copy
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q

from automations.actions import run_actions
from automations.models import Automation, Firing, TriggerBucket
from automations.triggers import Matcher
from events.emit import emit, make, resource as resource_ref

logger = logging.getLogger(__name__)

# A bucket keeps the ids of the last events it counted, not all of them (a threshold may be 10,000).
MAX_EVENT_IDS = 100
FIRED_EVENT = "automation.fired"
# Automations may react to each other's firings, but a chain of them stops at this length: A
# reacting to B reacting to A would otherwise ping-pong for ever.
MAX_CHAIN = 3
BUCKET_FIELDS = ("opened", "deadline", "count", "event_ids", "resource", "fired")


@dataclass
class Pending:
    """A firing decided during evaluation, created after the batch's buckets are written."""

    automation: Automation
    key: str
    event_ids: list
    resource: dict
    reason: str
    events: list = field(default_factory=list)


def parts_of(trigger):
    """(path, event trigger) for each part: ("", trigger), or ("0", …), ("1", …) of a compound."""
    if trigger.get("type") == "compound":
        return [(str(i), part) for i, part in enumerate(trigger.get("triggers") or [])]
    return [("", trigger)]


def working_key(path, key):
    """A compound part's own record of its firing is (path, ""); its counting buckets never use ""."""
    return key or ("*" if path else "")


def chain_of(event):
    """How many firings led to `event`: 0 for any event but `automation.fired`."""
    if event.name != FIRED_EVENT:
        return 0
    chain = (event.payload or {}).get("chain", 1)
    return chain if isinstance(chain, int) and not isinstance(chain, bool) else MAX_CHAIN


def is_own_echo(automation, event):
    """The loop guard: an automation's own `automation.fired` events never reach its trigger, and
    no automation reacts to a firing at the end of a chain of MAX_CHAIN firings."""
    if event.name != FIRED_EVENT:
        return False
    ref = event.resource or {}
    own = ref.get("kind") == "automation" and str(ref.get("id")) == str(automation.pk)
    return own or chain_of(event) >= MAX_CHAIN


def event_label(event):
    ref = event.resource or {}
    name = ref.get("name") or ref.get("id", "")
    return f"{event.name} on {ref.get('kind', '?')} {name}".strip()


class BucketStore:
    """The buckets one evaluation reads and writes: loaded in one query, written back in bulk.

    Each automation's changes can be dropped (`discard`) when its evaluation raises."""

    def __init__(self):
        self.loaded = {}  # (automation_id, path, key) -> dict of BUCKET_FIELDS as read
        self.current = {}  # the same after this evaluation's changes; None: deleted
        self.touched = set()

    def load(self, wanted):
        """Read the buckets of `wanted` ({automation_id: {(path, key)}}) in one query, locked on
        PostgreSQL so two persisters never count into one bucket at once."""
        wanted = {aid: pairs for aid, pairs in wanted.items() if pairs}
        if not wanted:
            return
        paths = {path for pairs in wanted.values() for path, _ in pairs}
        keys = {key for pairs in wanted.values() for _, key in pairs}
        rows = (TriggerBucket.objects.select_for_update().order_by("pk")
                .filter(automation_id__in=list(wanted), path__in=paths, key__in=keys)
                .values("automation_id", "path", "key", *BUCKET_FIELDS))
        for row in rows:
            ident = (row.pop("automation_id"), row.pop("path"), row.pop("key"))
            self.loaded[ident] = row
        self.current = copy.deepcopy(self.loaded)

    def get(self, aid, path, key):
        return self.current.get((aid, path, key))

    def put(self, aid, path, key, bucket):
        self.current[(aid, path, key)] = bucket
        self.touched.add((aid, path, key))

    def delete(self, aid, path, key):
        self.current[(aid, path, key)] = None
        self.touched.add((aid, path, key))

    def discard(self, aid):
        for ident in [ident for ident in self.touched if ident[0] == aid]:
            self.touched.discard(ident)
            if ident in self.loaded:
                self.current[ident] = copy.deepcopy(self.loaded[ident])
            else:
                self.current.pop(ident, None)

    def save(self):
        """At most one DELETE and one upsert, whatever the number of buckets."""
        gone, kept = defaultdict(set), []
        # In one order everywhere, so two persisters writing the same buckets wait, never deadlock.
        for ident in sorted(self.touched):
            bucket = self.current.get(ident)
            if bucket is None:
                gone[ident[:2]].add(ident[2])
            else:
                kept.append(TriggerBucket(automation_id=ident[0], path=ident[1], key=ident[2], **bucket))
        if gone:
            where = Q()
            for (aid, path), keys in gone.items():
                where |= Q(automation_id=aid, path=path, key__in=keys)
            TriggerBucket.objects.filter(where).delete()
        if kept:
            TriggerBucket.objects.bulk_create(kept, update_conflicts=True,
                                              unique_fields=["automation", "path", "key"],
                                              update_fields=list(BUCKET_FIELDS))
        self.touched.clear()


def new_bucket(**values):
    return {"opened": None, "deadline": None, "count": 0, "event_ids": [], "resource": {}, "fired": None} | values


class Evaluation:
    """One pass over a batch (or one proactive bucket): the buckets and the firings it decides."""

    def __init__(self, now):
        self.now = now
        self.store = BucketStore()
        self.pending = []
        self.decided = defaultdict(int)  # automation id -> firings pending in this evaluation

    def _add(self, pending):
        """Keep a firing; past the cap per automation it is dropped here already, so a flood of
        events never builds a list of firings fire_many would drop anyway."""
        aid = pending.automation.pk
        self.decided[aid] += 1
        if self.decided[aid] <= max_firings():
            self.pending.append(pending)

    # --- what fires -----------------------------------------------------------------------------
    def part_fired(self, automation, path, key, event_ids, resource, reason, at, events=()):
        """A trigger (path "") fires its automation; a compound's part counts towards the whole."""
        if not path:
            self._add(Pending(automation, key, list(event_ids), resource or {}, reason, list(events)))
            return
        trigger = automation.trigger
        if trigger.get("require") == "any":
            self._add(Pending(automation, key, list(event_ids), resource or {},
                                        f"part {int(path) + 1}: {reason}", list(events)))
            return
        aid, within = automation.pk, timedelta(seconds=int(trigger.get("within") or 0))
        record = new_bucket(opened=at, fired=at, event_ids=list(event_ids)[-MAX_EVENT_IDS:], resource=resource or {})
        self.store.put(aid, path, "", record)
        paths = [p for p, _ in parts_of(trigger)]
        records = [self.store.get(aid, p, "") for p in paths]
        if all(r and r["fired"] and abs(r["fired"] - at) <= within for r in records):
            for p in paths:
                self.store.delete(aid, p, "")
            ids = [i for r in records for i in r["event_ids"]][-MAX_EVENT_IDS:]
            self._add(Pending(automation, key, ids, resource or {},
                                        f"all parts fired within {within.total_seconds():.0f} s; last: {reason}",
                                        list(events)))

    # --- reactive and proactive evaluation over events --------------------------------------------
    def react(self, automation, path, matcher, events):
        aid, within = automation.pk, timedelta(seconds=matcher.within)
        for event in events:
            key = matcher.key(event)
            if matcher.threshold <= 1:
                self.part_fired(automation, path, key, [str(event.id)], event.resource, event_label(event),
                                event.occurred, [event])
                continue
            bucket_key = working_key(path, key)
            bucket = self.store.get(aid, path, bucket_key)
            if bucket is None or event.occurred >= bucket["opened"] + within:
                bucket = new_bucket(opened=event.occurred)  # the window opens at the first event it counts
            bucket = {**bucket, "count": bucket["count"] + 1, "resource": event.resource or {},
                      "event_ids": (bucket["event_ids"] + [str(event.id)])[-MAX_EVENT_IDS:]}
            if bucket["count"] >= matcher.threshold:
                self.store.delete(aid, path, bucket_key)  # it starts over: the same events never fire twice
                self.part_fired(automation, path, key, bucket["event_ids"], event.resource,
                                f"{bucket['count']} × {event.name} within {matcher.within} s "
                                f"(last: {event_label(event)})", event.occurred, [event])
            else:
                self.store.put(aid, path, bucket_key, bucket)

    def wait(self, automation, path, matcher, events):
        """Proactive: `expect` closes the resource's bucket, then `after` (re)opens it, in that order,
        so an event that is both (a heartbeat) moves the deadline on."""
        aid, within = automation.pk, timedelta(seconds=matcher.within)
        for event in events:
            key = working_key(path, matcher.key(event))
            if matcher.closes(event):
                self.store.delete(aid, path, key)
            if matcher.opens(event):
                self.store.put(aid, path, key, new_bucket(opened=event.occurred, deadline=event.occurred + within,
                                                          event_ids=[str(event.id)], resource=event.resource or {}))

    def wanted_buckets(self, automation, matchers):
        """The (path, key) pairs the evaluation of `automation` will read."""
        pairs = set()
        for path, matcher, events in matchers:
            if matcher.posture == "reactive" and matcher.threshold > 1:
                pairs |= {(path, working_key(path, matcher.key(e))) for e in events}
        if automation.trigger.get("type") == "compound" and automation.trigger.get("require") != "any":
            if any(events for _, _, events in matchers):
                pairs |= {(p, "") for p, _ in parts_of(automation.trigger)}
        return pairs

    def save(self):
        self.store.save()
        return len(fire_many(self.pending, self.now))


def on_events(events, now):
    """React to a batch of newly stored events (the event persister's consumer). Returns firings."""
    events = [e for e in events if e.name]
    if not events:
        return 0
    by_workspace = defaultdict(list)
    for event in sorted(events, key=lambda e: (e.occurred, str(e.id))):
        by_workspace[event.workspace_id].append(event)
    automations = list(Automation.objects.filter(workspace_id__in=list(by_workspace), enabled=True).order_by("pk"))
    if not automations:
        return 0
    evaluation = Evaluation(now)
    plans, wanted = [], {}
    for automation in automations:
        try:
            matchers = []
            for path, trigger in parts_of(automation.trigger):
                matcher = Matcher(trigger)
                matched = [e for e in by_workspace[automation.workspace_id]
                           if not is_own_echo(automation, e) and matcher.matches(e)]
                matchers.append((path, matcher, matched))
            wanted[automation.pk] = evaluation.wanted_buckets(automation, matchers)
            plans.append((automation, matchers))
        except Exception:
            logger.exception("Automation %s (%s) could not match events; the others go on.", automation.pk,
                             automation.name)
    evaluation.store.load(wanted)
    for automation, matchers in plans:
        before = len(evaluation.pending)
        try:
            for path, matcher, matched in matchers:
                if matched:
                    (evaluation.wait if matcher.posture == "proactive" else evaluation.react)(
                        automation, path, matcher, matched)
        except Exception:
            logger.exception("Automation %s (%s) failed on a batch of events; the others go on.", automation.pk,
                             automation.name)
            evaluation.store.discard(automation.pk)
            del evaluation.pending[before:]
            evaluation.decided.pop(automation.pk, None)
    return evaluation.save()


def max_firings():
    return settings.ORCHESTRATOR["AUTOMATIONS_MAX_FIRINGS_PER_MINUTE"]


def within_cap(pending, now):
    """`pending` without the firings past each automation's cap (AUTOMATIONS_MAX_FIRINGS_PER_MINUTE
    in the 60 s up to `now`), in one query. Actions cause events (a resumed schedule, a crashed
    run) that no loop guard can tell from others, so two automations resuming and pausing one
    schedule would ping-pong for ever, and one automation would fire once per event of a flood."""
    if not pending:
        return pending
    cap = max_firings()
    recent = dict(Firing.objects.filter(automation_id__in={p.automation.pk for p in pending},
                                        fired__gt=now - timedelta(seconds=60))
                  .values("automation_id").annotate(n=Count("id")).values_list("automation_id", "n"))
    kept, dropped = [], defaultdict(int)
    for p in pending:
        aid = p.automation.pk
        if recent.get(aid, 0) < cap:
            recent[aid] = recent.get(aid, 0) + 1
            kept.append(p)
        else:
            dropped[aid] += 1
    for aid, count in dropped.items():
        logger.warning("Automation %s fired %d times in the last 60 s (ORCHESTRATOR_AUTOMATIONS_MAX_FIRINGS_PER_MINUTE);"
                       " %d more firings were dropped (a loop between automations, or a flood of events?).",
                       aid, cap, count)
    return kept


def fire_many(pending, now):
    """Create the firings of `pending`, run their actions, emit their `automation.fired` events."""
    pending = within_cap(pending, now)
    if not pending:
        return []
    firings = Firing.objects.bulk_create([
        Firing(automation=p.automation, workspace_id=p.automation.workspace_id, fired=now, key=p.key[:300],
               reason=p.reason[:2000], event_ids=list(p.event_ids), resource=p.resource or {}) for p in pending])
    Automation.objects.filter(pk__in={p.automation.pk for p in pending}).update(last_fired=now)
    events_by_id = _events_for(pending)
    # One savepoint per automation: one whose actions raise (the contract says they should not) is
    # recorded as failed without undoing the other automations' actions.
    groups = defaultdict(list)
    for firing, p in zip(firings, pending):
        p.automation.last_fired = now
        groups[p.automation.pk].append((firing, p))
    for group in groups.values():
        try:
            with transaction.atomic():
                for firing, p in group:
                    context = {"events": [events_by_id[i] for i in p.event_ids if i in events_by_id],
                               "resource": p.resource or None, "reason": p.reason}
                    firing.results = list(run_actions(p.automation, firing, context, now) or [])
        except Exception as exc:
            logger.exception("The actions of automation %s raised; its firings record the failure.",
                             group[0][1].automation.pk)
            for firing, _ in group:
                firing.results = [{"type": "*", "ok": False, "detail": f"The actions failed: {exc}"[:500]}]
    Firing.objects.bulk_update(firings, ["results"])
    emit([make(p.automation.workspace_id, FIRED_EVENT, resource_ref("automation", p.automation.pk, p.automation.name),
               related=[p.resource] if (p.resource or {}).get("kind") else [],
               payload={"firing_id": firing.pk, "reason": p.reason, "key": p.key,
                        "chain": 1 + max((chain_of(e) for e in p.events), default=0),
                        "event_ids": list(p.event_ids)[-20:], "results": firing.results}, occurred=now)
          for firing, p in zip(firings, pending)])
    return firings


def _events_for(pending):
    """The events the firings name: those of the batch in memory, the earlier ones in one query."""
    from events.models import Event

    known = {str(e.id): e for p in pending for e in p.events}
    missing = {i for p in pending for i in p.event_ids if i not in known}
    if missing:
        workspaces = {p.automation.workspace_id for p in pending}
        known |= {str(e.id): e for e in Event.objects.filter(id__in=list(missing), workspace_id__in=workspaces)}
    return known


def fire(automation, key, event_ids, resource, reason, now, events=()):
    """Fire `automation` once: a Firing, its actions, an `automation.fired` event. Returns the Firing,
    or None when the automation is past its cap of firings per minute."""
    fired = fire_many([Pending(automation, key, [str(i) for i in event_ids], resource or {}, reason, list(events))],
                      now)
    return fired[0] if fired else None


def fire_silent_bucket(bucket, now):
    """Fire (or count towards a compound) a proactive bucket whose deadline passed; the caller has
    already taken it (deleted it conditionally), so no other copy fires it."""
    automation = bucket.automation
    path = bucket.path
    trigger = dict(parts_of(automation.trigger)).get(path) or {}
    key = "" if bucket.key == "*" else bucket.key
    reason = (f"nothing of {', '.join(trigger.get('expect') or [])} within {trigger.get('within')} s "
              f"after {'an event' if not bucket.resource else _ref_label(bucket.resource)}")
    evaluation = Evaluation(now)
    if path and automation.trigger.get("require") != "any":
        evaluation.store.load({automation.pk: {(p, "") for p, _ in parts_of(automation.trigger)}})
    evaluation.part_fired(automation, path, key, bucket.event_ids, bucket.resource, reason, bucket.deadline)
    return evaluation.save()


def _ref_label(ref):
    return f"{ref.get('kind', '?')} {ref.get('name') or ref.get('id', '')}".strip()
