"""Logs apart from orchestration: a dedup key for the ingestion path, and an indexed text search.

On PostgreSQL, `q` searches (`message ILIKE`-style, Django's `icontains`, which compares
`UPPER(message)`) use a pg_trgm GIN index on `upper(message)`. pg_trgm is a trusted extension since
PostgreSQL 13: the database's owner may create it. When it cannot be created (an older server, a
role without CREATE on the database), the migration goes on without the index and says so; search
then scans, bounded by the other filters (README, "Logs").
"""

import logging

from django.db import migrations, models

logger = logging.getLogger(__name__)


def trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SAVEPOINT log_trgm")
        try:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except Exception as exc:  # noqa: BLE001 - any refusal: go on without the index
            cursor.execute("ROLLBACK TO SAVEPOINT log_trgm")
            logger.warning("pg_trgm could not be created (%s): log search will scan instead of using an index.", exc)
            return
        cursor.execute("RELEASE SAVEPOINT log_trgm")
        cursor.execute("CREATE INDEX IF NOT EXISTS log_message_trgm ON runs_log USING gin (upper(message) gin_trgm_ops)")


def drop_trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS log_message_trgm")


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0015_lifecycle'),
    ]

    operations = [
        migrations.AddField(
            model_name='log',
            name='ingest_id',
            field=models.UUIDField(blank=True, editable=False, null=True, unique=True),
        ),
        migrations.RunPython(trigram_index, drop_trigram_index, elidable=False),
    ]
