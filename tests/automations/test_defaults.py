"""Every workspace gets the default automations: new ones when created, old ones by the migration."""

import importlib

import pytest
from django.apps import apps as global_apps

from automations import defaults
from automations.models import Automation
from automations.triggers import validate_trigger
from tests import factories

pytestmark = pytest.mark.django_db

migration = importlib.import_module("automations.migrations.0002_triggers_defaults")


class SchemaEditor:
    class connection:
        alias = "default"


def summary(ws):
    return sorted(Automation.objects.filter(workspace=ws).values_list("default_key", "enabled"))


def test_a_new_workspace_gets_the_defaults(ws):
    assert summary(ws) == [("crash-silent-runs", True), ("notify-failed-runs", False), ("service-failing", True)]
    crash = Automation.objects.get(workspace=ws, default_key="crash-silent-runs")
    assert crash.actions == [{"type": "mark-crashed"}]
    assert crash.trigger["posture"] == "proactive" and crash.trigger["within"] == 300
    failing = Automation.objects.get(workspace=ws, default_key="service-failing")
    assert (failing.trigger["threshold"], failing.trigger["within"], failing.trigger["for_each"]) == (3, 3600, "resource")


def test_the_defaults_are_valid_triggers():
    for default in defaults.DEFAULTS:
        assert validate_trigger(default["trigger"]) == default["trigger"]


def test_saving_a_workspace_again_does_not_recreate_a_deleted_default(ws):
    Automation.objects.filter(workspace=ws, default_key="service-failing").delete()
    ws.name = "renamed"
    ws.save()
    assert len(summary(ws)) == 2


def test_the_migration_fills_in_missing_defaults_idempotently(ws, other_ws):
    Automation.objects.filter(workspace=other_ws).delete()
    edited = Automation.objects.get(workspace=ws, default_key="crash-silent-runs")
    edited.enabled, edited.description = False, "ours now"
    edited.save()
    for _ in range(2):
        migration.add_defaults(global_apps, SchemaEditor)
    assert summary(other_ws) == summary(factories.workspace()) and len(summary(other_ws)) == 3
    assert Automation.objects.filter(workspace=ws).count() == 3
    edited.refresh_from_db()
    assert (edited.enabled, edited.description) == (False, "ours now")


def test_a_workspace_with_its_own_automation_of_a_defaults_name_keeps_its_own(other_ws):
    Automation.objects.filter(workspace=other_ws).delete()
    Automation.objects.create(workspace=other_ws, name="Crash runs without a heartbeat", trigger={}, enabled=False)
    assert defaults.create_defaults([other_ws.pk]) == 3
    assert Automation.objects.filter(workspace=other_ws).count() == 3
    assert not Automation.objects.get(workspace=other_ws, name="Crash runs without a heartbeat").enabled
