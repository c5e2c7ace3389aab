"""On PostgreSQL, a `q` search can be answered from the pg_trgm index of migration 0014."""

import pytest
from django.db import connection

from runs.logs import reading
from runs.models import Log
from tests.logs.conftest import write_lines

pytestmark = pytest.mark.django_db


def test_the_search_sql_matches_the_trigram_index_expression(ws, run):
    """Django's icontains is `UPPER(message::text) LIKE UPPER(%s)`: the index is on upper(message),
    so the planner can use it (forced here: on a test-sized table a scan is cheaper)."""
    if connection.vendor != "postgresql":
        pytest.skip("pg_trgm is PostgreSQL's; SQLite scans the run's or workspace's lines")
    write_lines(run, [f"line {i} of the warehouse load" if i % 500 == 0 else f"line {i} of rows" for i in range(3000)])
    queryset = reading.search(Log.objects.all(), "WareHouse")
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "log_message_trgm" in plan, plan
    assert queryset.count() == 6
