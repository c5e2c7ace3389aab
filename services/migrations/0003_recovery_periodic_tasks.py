from django.conf import settings
from django.db import migrations

from services.migrations._periodic import periodic_task_adder, periodic_task_remover

_O = settings.ORCHESTRATOR
SERVICES = [
    ("zombie-killer", _O["ZOMBIE_KILLER_LOOP_SECONDS"]),
    ("lazarus", _O["LAZARUS_LOOP_SECONDS"]),
    ("mark-late-runs", _O["LATE_RUNS_LOOP_SECONDS"]),
    ("cancellation-cleanup", _O["CANCELLATION_CLEANUP_LOOP_SECONDS"]),
    ("fail-expired-pauses", _O["PAUSE_EXPIRER_LOOP_SECONDS"]),
    ("agent-monitor", _O["AGENT_MONITOR_LOOP_SECONDS"]),
]


class Migration(migrations.Migration):
    dependencies = [("services", "0002_service_ledger")]

    operations = [migrations.RunPython(periodic_task_adder(SERVICES), periodic_task_remover(SERVICES))]
