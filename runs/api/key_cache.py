"""Verified API keys, kept in the process for a few seconds so that a request does not look its key
up again (one query with two joins, and for a person's key one more for the membership).

An entry holds what a request needs: the key (its id, role, user id, expiry and last use), its
workspace and account, the person it acts for, and the role it acts with. It lives
API_KEY_CACHE_SECONDS (0: no cache), so a revocation, a demotion or a removed member made by
another process is honoured within that many seconds; in this process any save or delete of a key,
workspace, account, membership or person forgets every entry at once (`forget_everything`). The
expiry is checked against the clock on every request by the authentication, not here. At most
API_KEY_CACHE_SIZE entries: the least recently used goes first.

The workspaces that flow runs' report tokens name are kept the same way (`known_workspaces`).
"""

import copy
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from django.conf import settings


@dataclass
class VerifiedKey:
    """A key as its last lookup found it (`key` with workspace, account and user loaded) and the role
    it acts with. `key` is shared by the requests of the process: each gets its own copy (`fresh`)."""

    key: object
    role: str

    def fresh(self):
        """A copy of the key (and of its workspace, account and person) for one request to hold, with
        the role it acts with: what one request changes on it never reaches another."""
        key = shallow_copy(self.key)
        key.workspace = copied_workspace(self.key.workspace)
        if self.key.user_id:
            key.user = shallow_copy(self.key.user)
        key.acting_role = self.role
        return key


def copied_workspace(workspace):
    """A copy of a remembered workspace, with its account, for one request to hold."""
    mine = shallow_copy(workspace)
    mine.account = shallow_copy(workspace.account)
    return mine


def shallow_copy(instance):
    """copy.copy(instance) of a model instance, as Model.__getstate__ makes it (its own ModelState
    and cache of related objects, the same values), without pickling's detour through the app
    registry and __setstate__: 3.4 µs where copy.copy took 8.1, four times a request."""
    clone = instance.__class__.__new__(instance.__class__)
    clone.__dict__.update(instance.__dict__)
    clone._state = copy.copy(instance._state)
    clone._state.fields_cache = instance._state.fields_cache.copy()
    return clone


class Remembered:
    """An LRU of values by key, each forgotten API_KEY_CACHE_SECONDS after it was remembered (0:
    nothing is remembered); at most API_KEY_CACHE_SIZE entries; safe across threads."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock  # seconds; a parameter so that tests move time instead of sleeping
        self._entries = OrderedDict()  # key -> (value, remembered at)
        self._lock = threading.Lock()

    def get(self, key):
        """The value remembered for `key` less than API_KEY_CACHE_SECONDS ago, else None."""
        ttl = settings.ORCHESTRATOR["API_KEY_CACHE_SECONDS"]
        if ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock() - entry[1] >= ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def remember(self, key, value):
        """Remember `value` for `key`; returns `value`."""
        if settings.ORCHESTRATOR["API_KEY_CACHE_SECONDS"] <= 0:
            return value
        size = max(1, settings.ORCHESTRATOR["API_KEY_CACHE_SIZE"])
        with self._lock:
            self._entries[key] = (value, self.clock())
            self._entries.move_to_end(key)
            while len(self._entries) > size:
                self._entries.popitem(last=False)
        return value

    def forget(self, key):
        with self._lock:
            self._entries.pop(key, None)

    def forget_all(self, **_signal_arguments):
        """Forget every entry (a receiver of the model signals wired in runs/apps.py)."""
        with self._lock:
            self._entries.clear()

    def __len__(self):
        return len(self._entries)


class VerifiedKeys(Remembered):
    """VerifiedKey entries by the key's hash."""

    def put(self, hashed, key, role):
        """Remember `key` (loaded with workspace, account and user), acting as `role`; returns the entry."""
        return self.remember(hashed, VerifiedKey(key, role))


verified_keys = VerifiedKeys()

# Workspaces by id, with their account: what a request authenticated by a flow run's report token
# (which names its workspace's id) checks the URL's names against, without a query each time. A
# workspace renamed or being deleted by another process is seen within API_KEY_CACHE_SECONDS, as keys are.
known_workspaces = Remembered()


def forget_everything(**_signal_arguments):
    """Forget every verified key and known workspace (this process at once; the others within
    API_KEY_CACHE_SECONDS)."""
    verified_keys.forget_all()
    known_workspaces.forget_all()
