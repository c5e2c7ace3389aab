"""Django's PostgreSQL backend with a health check that costs no round trip.

With CONN_HEALTH_CHECKS, Django sends `SELECT 1` before the first query of every request that
reuses a persistent connection: a round trip and a statement on every API call, a third of a flow
run's heartbeat (issue 16). A backend that ended (a restart, a failover, `pg_terminate_backend`)
tells its client so before it closes the socket, so a healthy idle connection has nothing to read
and a lost one does: a poll of the socket with no wait tells them apart. Only when there is
something to read does the check send Django's `SELECT 1` (and close the connection if it fails),
so a dead connection is still replaced before the request's first query
(tests/platform/test_database_outage.py). A connection lost without a word (a network partition)
fails the query that finds it, which answers 503 (orchestrator/health.py), as it did before.
"""

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
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
