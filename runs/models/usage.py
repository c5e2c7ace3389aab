"""Usage: how many task runs of a workspace COMPLETED in each calendar month (UTC), for its quota."""

from django.db import models

from .workspaces import Workspace

# Completions of one workspace-month are spread over this many counter rows (by task run id), so
# task runs completing at once in one workspace rarely wait for each other's row lock; the month's
# count is the sum of its rows.
USAGE_SHARDS = 8


class TaskRunUsage(models.Model):
    """One shard of a workspace's count of task runs that COMPLETED in `month` (its first day, UTC)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="task_run_usage")
    month = models.DateField(help_text="The first day of the calendar month (UTC).")
    shard = models.PositiveSmallIntegerField()
    completed = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "month", "shard"], name="taskrunusage_unique"),
        ]

    def __str__(self):
        return f"{self.workspace_id} {self.month:%Y-%m} #{self.shard}: {self.completed}"
