"""A Redis stream read through a consumer group: at least once, for the persisters of events and logs.

An entry read but not yet acknowledged is read again by the next pass (XREADGROUP from 0 returns
this consumer's unacknowledged entries first), so a persister that dies between its store and its
acknowledgement re-reads the batch; its store must therefore drop what it already has (both do, by
id). Entries are acknowledged and deleted only after the store's transaction committed. Redis's own
durability decides what survives a Redis restart: with `appendonly yes` nothing is lost.

The caller gives the Redis client (events/buffer.py keeps the process's client and its circuit
breaker), so one breaker covers every stream of the same server.
"""

import json
import logging
from dataclasses import dataclass, field

from orchestrator.redis_script import RedisScript

logger = logging.getLogger(__name__)

# XADD ARGV[3..] as entries of one field ARGV[1] (trimming to about ARGV[2] entries when it is not 0);
# the stream's length after.
_ADD = """
local field, maxlen = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
    if maxlen > 0 then
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', field, ARGV[i])
    else
        redis.call('XADD', KEYS[1], '*', field, ARGV[i])
    end
end
return redis.call('XLEN', KEYS[1])
"""


_ADD_SCRIPT = RedisScript(_ADD)


@dataclass
class Batch:
    source: str
    items: list  # decoded entry bodies
    ids: list = field(default_factory=list)  # stream entry ids (or table pks, for a table batch)
    # Read again (this consumer's unacknowledged entries): a store may have kept them already. New
    # entries are delivered once, so they cannot have been stored before (save for a group made
    # again from 0; a store still refuses a duplicate id).
    redelivered: bool = False


class ConsumerGroupStream:
    """One stream key, one consumer group, one consumer name; each entry carries a JSON body in `field`."""

    def __init__(self, key, group="persister", consumer="persister", field=b"e"):
        self._key = key  # a string, or a function returning it (read live: tests and settings change it)
        self.group, self.consumer, self.field = group, consumer, field

    @property
    def key(self):
        return self._key() if callable(self._key) else self._key

    def add(self, client, bodies, maxlen=None):
        """XADD each JSON text of `bodies`, in order, in one command; returns the stream's length after them.

        One script (XADD per body on the server) rather than a pipeline of XADDs: redis-py builds
        and packs a command per XADD, which for a claim's 200 events was most of the sending
        thread's CPU; the script is one command whatever the count."""
        if not bodies:
            return self.length(client)
        return _ADD_SCRIPT(keys=[self.key], args=[self.field, maxlen or 0, *bodies], client=client)

    def ensure_group(self, client):
        import redis

        try:
            # From 0: entries added before the group existed (a Redis restarted from its AOF without
            # the group, a stream made by writers first) are read too; duplicates are dropped on store.
            client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, client, limit, flatten=False):
        """The next entries: this consumer's unacknowledged ones first, then new ones. A body that is
        not JSON is logged and dropped (acknowledged with the batch). With `flatten`, each body is a
        JSON list and the batch's items are their concatenation."""
        import redis

        entries, start = [], ">"
        for attempt in range(2):
            try:
                for start in ("0", ">"):
                    answer = client.xreadgroup(self.group, self.consumer, {self.key: start}, count=limit)
                    entries = answer[0][1] if answer else []
                    gone = [entry_id for entry_id, fields in entries if not fields]  # deleted while pending
                    if gone:
                        client.xack(self.key, self.group, *gone)
                    entries = [(entry_id, fields) for entry_id, fields in entries if fields]
                    if entries:
                        break
                break
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc) or attempt:
                    raise
                self.ensure_group(client)
        ids = [entry_id for entry_id, _ in entries]
        bodies = [fields.get(self.field) for _, fields in entries]
        if bodies and all(bodies):
            # One parse for the batch (a third faster than one per entry); any doubt, one by one.
            try:
                items = json.loads(b"[" + b",".join(bodies) + b"]")
                if len(items) == len(bodies) and (not flatten or all(isinstance(i, list) for i in items)):
                    return Batch("redis", [x for i in items for x in i] if flatten else items, ids,
                                 redelivered=start == "0")
            except ValueError:
                pass
        items = []
        for entry_id, body in zip(ids, bodies):
            try:
                item = json.loads(body)
            except (TypeError, ValueError) as exc:
                logger.error("Dropped stream entry %s of %s: not JSON (%s).", entry_id, self.key, exc)
                continue
            if flatten:
                if isinstance(item, list):
                    items.extend(item)
                else:
                    logger.error("Dropped stream entry %s of %s: not a list.", entry_id, self.key)
            else:
                items.append(item)
        return Batch("redis", items, ids, redelivered=start == "0")

    def ack(self, client, ids):
        """Acknowledge and delete the entries (after their transaction committed)."""
        if not ids:
            return
        pipe = client.pipeline(transaction=False)
        pipe.xack(self.key, self.group, *ids)
        pipe.xdel(self.key, *ids)
        pipe.execute()

    def length(self, client):
        return client.xlen(self.key) if client is not None else 0
