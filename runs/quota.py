"""The monthly task-run quota: counting successful task runs per workspace and calendar month (UTC),
and the answer agents' claims get once a workspace has used its quota.

Counting happens in runs/states.py, in the transaction of the move to COMPLETED, and exactly once
per task run: that move also sets `TaskRun.quota_counted`, conditionally on it being unset, so two
completions at once (only one of which moves the run), a retried report, or a task run retried and
completed again, or a recovery service's FAILED overturned by a late COMPLETED, count once. The
count goes to the month of the move (UTC) into one of `USAGE_SHARDS` counter rows of the workspace,
by one INSERT … ON CONFLICT DO UPDATE.

Off by default (a self-hosted server): a workspace without `monthly_task_run_quota` is counted (its
usage page shows the month) but never refused. With a quota, a claim reads the month's count (one
query over its few counter rows) and, once it is reached, claims no new runs: they wait, SCHEDULED
or LATE, until the month ends or an admin raises the quota. Runs already claimed or running go on,
and their task runs still count (usage may pass the quota by what was already running).
"""

from collections import Counter
from datetime import date, datetime, timezone as dt_timezone

from django.db import connection
from django.db.models import Sum

from runs.models import USAGE_SHARDS, TaskRunUsage


def month_of(now):
    """The first day of `now`'s calendar month in UTC."""
    return now.astimezone(dt_timezone.utc).date().replace(day=1)


def next_month(month):
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_month(month):
    return date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


def resets_at(now):
    """When the month of `now` ends and its count starts again from 0 (midnight UTC)."""
    return datetime.combine(next_month(month_of(now)), datetime.min.time(), tzinfo=dt_timezone.utc)


def shard_of(task_run_id):
    return task_run_id.int % USAGE_SHARDS


def count_completions(completed, now):
    """Add the task runs of `completed` ((workspace id, task run id) pairs, each counted by its caller's
    conditional update) to their workspace's count for the month of `now`.

    One statement, in the caller's transaction, whatever the number of task runs. The counter rows are
    written in a fixed order, so two transactions counting several never deadlock on them.
    """
    if not completed:
        return
    month = month_of(now)
    counts = Counter((workspace_id, shard_of(task_run_id)) for workspace_id, task_run_id in completed)
    rows = sorted(counts.items())
    meta = TaskRunUsage._meta
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    workspace, month_col, shard, done = (quote(meta.get_field(name).column)
                                         for name in ("workspace", "month", "shard", "completed"))
    month_value = meta.get_field("month").get_db_prep_value(month, connection)
    values = ", ".join(["(%s, %s, %s, %s)"] * len(rows))
    params = [p for (workspace_id, shard_no), n in rows for p in (workspace_id, month_value, shard_no, n)]
    # PostgreSQL and SQLite (≥ 3.24) both speak this upsert.
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({workspace}, {month_col}, {shard}, {done}) VALUES {values} "
            f"ON CONFLICT ({workspace}, {month_col}, {shard}) DO UPDATE SET {done} = {table}.{done} + EXCLUDED.{done}",
            params)


def used(workspace_id, now):
    """How many task runs of the workspace COMPLETED in the month of `now` (one query)."""
    return TaskRunUsage.objects.filter(workspace_id=workspace_id, month=month_of(now)) \
        .aggregate(n=Sum("completed"))["n"] or 0


def monthly_counts(workspace_ids, first_month, last_month):
    """{(workspace id, month): count} of the months from `first_month` to `last_month` (one query)."""
    rows = (TaskRunUsage.objects.filter(workspace_id__in=workspace_ids, month__gte=first_month, month__lte=last_month)
            .values("workspace_id", "month").annotate(n=Sum("completed")).values_list("workspace_id", "month", "n"))
    return {(workspace_id, month): n for workspace_id, month, n in rows}


def months_back(now, count):
    """The `count` months ending with that of `now`, newest first."""
    months = [month_of(now)]
    while len(months) < count:
        months.append(previous_month(months[-1]))
    return months


def refusal_message(workspace, used_count, now):
    limit = workspace.monthly_task_run_quota
    return (f"Workspace {workspace.account.slug}/{workspace.slug} has used its monthly task-run quota: "
            f"{used_count:,} of {limit:,} successful task runs in {month_of(now):%B %Y} (UTC). Agents claim no "
            f"new runs until the quota resets at {resets_at(now):%Y-%m-%d %H:%M} UTC or a workspace admin raises "
            "it (monthly_task_run_quota in the workspace's settings). Due runs wait, SCHEDULED or LATE; "
            "runs already claimed finish.")


def claim_refusal(workspace, now):
    """What a claim answers when the workspace's quota for the month of `now` is used up, else None.

    Free when the workspace has no quota (the limit is on the workspace row the request already
    holds, so a raised quota is seen within ORCHESTRATOR_API_KEY_CACHE_SECONDS); one query when it has.
    """
    limit = workspace.monthly_task_run_quota
    if limit is None:
        return None
    used_count = used(workspace.pk, now)
    if used_count < limit:
        return None
    return {"code": "quota_reached", "message": refusal_message(workspace, used_count, now), "limit": limit,
            "used": used_count, "month": f"{month_of(now):%Y-%m}", "resets_at": resets_at(now),
            "raised_by": "a workspace admin (monthly_task_run_quota in the workspace's settings)"}
