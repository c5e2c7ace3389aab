"""On PostgreSQL the events table's foreign key cascades a workspace's deletion; elsewhere there is
no such key (Django cannot declare it without cascading in Python), so this does it."""

from django.db import connection


def delete_workspace_events(sender, instance, using=None, **kwargs):
    from events.models import Event

    if connection.vendor != "postgresql":
        Event.objects.using(using).filter(workspace_id=instance.pk)._raw_delete(using or "default")
