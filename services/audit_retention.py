"""audit-retention: audit entries are kept as long as their workspace keeps its runs.

An entry older than its workspace's `run_retention_days` is deleted, in bounded batches
(ORCHESTRATOR_RECOVERY_BATCH_SIZE per pass, set-based: one DELETE per distinct retention),
so a pass stays short whatever the backlog; safe to run twice at once (a DELETE of rows
already gone deletes nothing).
"""

from datetime import timedelta

from django.conf import settings

from runs.models import AuditEntry, Workspace
from services.registry import register


@register("audit-retention", interval_setting="AUDIT_RETENTION_LOOP_SECONDS",
          description="Deletes audit entries older than their workspace's run retention.")
def run_once(now):
    budget = settings.ORCHESTRATOR["RECOVERY_BATCH_SIZE"]
    deleted = 0
    for days in sorted(set(Workspace.objects.values_list("run_retention_days", flat=True))):
        if deleted >= budget:
            break
        expired = AuditEntry.objects.filter(workspace__run_retention_days=days, occurred__lt=now - timedelta(days=days))
        ids = list(expired.order_by("occurred").values_list("pk", flat=True)[:budget - deleted])
        if ids:
            deleted += AuditEntry.objects.filter(pk__in=ids).delete()[0]
    return {"entries_deleted": deleted}
