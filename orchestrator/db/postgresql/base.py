"""Django's PostgreSQL backend with two savings on every request (issue 16).

A health check that costs no round trip: with CONN_HEALTH_CHECKS, Django sends `SELECT 1` before
the first query of every request that reuses a persistent connection: a round trip and a statement
on every API call, a third of a flow run's heartbeat. A backend that ended (a restart, a failover,
`pg_terminate_backend`) tells its client so before it closes the socket, so a healthy idle
connection has nothing to read and a lost one does: a poll of the socket with no wait tells them
apart. Only when there is something to read does the check send Django's `SELECT 1` (and close the
connection if it fails), so a dead connection is still replaced before the request's first query
(tests/platform/test_database_outage.py). A connection lost without a word (a network partition)
fails the query that finds it, which answers 503 (orchestrator/health.py), as it did before.

Timestamps read by psycopg's own loader: Django loads every `timestamptz` value with a subclass of
psycopg's pure-Python loader (to set the time zone it wants on it), which parses the text in Python:
about 8 µs a value, 6 % of a state change's CPU (its run's timestamps, twice). When Django's time
zone is UTC, as it is here, the connection's session is in UTC too (Django sets it), and psycopg's
compiled loader gives the very same aware datetimes, in `datetime.timezone.utc`; `UtcTimestampLoader`
hands each value to it.
"""

import functools
import select
from datetime import timezone as dt_timezone

from django.db.backends.postgresql import base
from django.db.backends.postgresql.psycopg_any import get_adapters_template
from psycopg import adapt, adapters
from psycopg.pq import Format

# psycopg's loader of `timestamptz` text: compiled with psycopg[binary] (the requirements').
_PSYCOPG_TIMESTAMP_LOADER = adapters.get_loader(base.TIMESTAMPTZ_OID, Format.TEXT)


class UtcTimestampLoader(adapt.Loader):
    """A `timestamptz` as an aware datetime in UTC, parsed by psycopg's own loader. Registered only
    when Django's time zone is UTC; `timezone` is what Django's create_cursor compares with its own
    (a cursor registers Django's loader when they differ, e.g. under a test's override_settings)."""

    timezone = dt_timezone.utc

    def __init__(self, oid, context=None):
        super().__init__(oid, context)
        self.load = _PSYCOPG_TIMESTAMP_LOADER(oid, context).load  # called per value: no frame of ours

    def load(self, data):  # what the instance's own `load` does (Loader declares it abstract)
        raise NotImplementedError


class ServerBindingCursor(base.ServerBindingCursor):
    """Django's cursor whose parameters the server binds (runs/hot_sql.py's `_server_bound`), which
    also names a prepared statement's text as the query it ran: psycopg keeps it (`cursor.query`,
    which Django's query log reads) only for a statement sent with its text, so DEBUG's log and the
    tests' captures said None for every prepared one."""

    def _send_query_prepared(self, name, pgq, *, binary=None):
        self._query = pgq
        super()._send_query_prepared(name, pgq, binary=binary)


@functools.cache
def _adapters_template():
    """Django's adapters for a connection in UTC (so USE_TZ is on), with UtcTimestampLoader for timestamptz."""
    template = adapt.AdaptersMap(get_adapters_template(True, dt_timezone.utc))
    template.register_loader("timestamptz", UtcTimestampLoader)
    return template


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self):
        params = super().get_connection_params()
        if self.timezone is dt_timezone.utc:  # USE_TZ with TIME_ZONE "UTC" (else Django's own loader)
            params["context"] = _adapters_template()
        return params

    def close_if_health_check_failed(self):
        if (self.connection is not None and self.health_check_enabled and not self.health_check_done
                and not self.pool and quiet(self.connection)):
            self.health_check_done = True  # nothing said: well, without a round trip
            return
        super().close_if_health_check_failed()


def quiet(connection):
    """True when an idle connection's socket has nothing to read (nothing said, not closed)."""
    try:
        readable, _, _ = select.select([connection.fileno()], [], [], 0)
    except Exception:  # e.g. a closed connection has no file descriptor: Django's own check decides
        return False
    return not readable
