"""Migration 0003: the events stored before the events app (runs_event) move into its table."""

from datetime import datetime
from datetime import timezone as dt_timezone

import pytest
from django.apps import apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from events import partitions
from events.models import Event

BEFORE = [("runs", "0010_apikey_agent_role"), ("events", "0002_partition_by_day")]


@pytest.mark.django_db(transaction=True)
def test_migration_0003_moves_old_events_into_the_events_table():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        old = executor.loader.project_state(BEFORE).apps
        account = old.get_model("runs", "Account").objects.create(name="Old", slug="old")
        ws = old.get_model("runs", "Workspace").objects.create(account=account, name="Old", slug="old")
        occurred = datetime(2026, 11, 20, 8, 30, tzinfo=dt_timezone.utc)
        old.get_model("runs", "Event").objects.create(
            workspace=ws, occurred=occurred, name="flow-run.state.crashed",
            resource={"kind": "flow-run", "id": "42"}, related=[{"kind": "flow", "id": "7"}],
            payload={"from": "RUNNING", "to": "CRASHED"})
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())

    moved = Event.objects.get(name="flow-run.state.crashed")
    assert moved.workspace_id == ws.pk
    assert moved.occurred == occurred and moved.received == occurred
    assert moved.resource == {"kind": "flow-run", "id": "42"}
    assert moved.related == [{"kind": "flow", "id": "7"}]
    assert moved.payload == {"from": "RUNNING", "to": "CRASHED"}
    assert "event" not in {model._meta.model_name for model in apps.get_app_config("runs").get_models()}
    if connection.vendor == "postgresql":
        assert partitions.is_partitioned(), "the events table is no longer partitioned after migrating back and forth"
