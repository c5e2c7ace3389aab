"""Test support: send the events a test's open transaction is holding, then run the persister.

Tests run inside a transaction that never commits, so events wait in its commit callbacks.
`flush()` pushes them as a commit would and runs one persister pass; it returns the stored events.
"""

from django.db import connection
from django.utils import timezone

from events import emit as emit_module
from events.sender import sender


def _is_event_push(func):
    return getattr(func, "func", None) is emit_module._push


def pending_pushes():
    return [entry for entry in connection.run_on_commit if _is_event_push(entry[1])]


def flush(now=None):
    """Buffer the events waiting for the test's commit and persist everything buffered."""
    from events import persister
    from events.models import Event

    pending = pending_pushes()
    connection.run_on_commit = [entry for entry in connection.run_on_commit if not _is_event_push(entry[1])]
    for _, push, _ in pending:
        push()
    sender.wait()
    persister.run_once(now or timezone.now())
    return Event.objects.all()
