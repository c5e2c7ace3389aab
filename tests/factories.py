"""Small factories: each builds one object with sensible defaults and takes overrides."""

import itertools
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from runs.models import (
    Account,
    Agent,
    ApiKey,
    Flow,
    FlowRun,
    Membership,
    Role,
    Schedule,
    ScheduleKind,
    State,
    TaskRun,
    WorkQueue,
    Workspace,
)

_seq = itertools.count(1)


def n():
    return next(_seq)


def account(**kw):
    i = n()
    return Account.objects.create(**{"name": f"Account {i}", "slug": f"acct-{i}", **kw})


def workspace(account_obj=None, **kw):
    i = n()
    return Workspace.objects.create(
        **{"account": account_obj or account(), "name": f"Workspace {i}", "slug": f"ws-{i}", **kw}
    )


def user(**kw):
    i = n()
    User = get_user_model()
    return User.objects.create_user(**{"username": f"user{i}", "password": "pw-for-tests-123", **kw})


def member(ws, role=Role.VIEWER, **kw):
    u = user(**kw)
    Membership.objects.create(user=u, workspace=ws, role=role)
    return u


def api_key(ws, role=Role.OPERATOR, **kw):
    """Returns (key, secret)."""
    return ApiKey.issue(workspace=ws, name=kw.pop("name", f"key-{n()}"), role=role, **kw)


def work_queue(ws, name=None, **kw):
    return WorkQueue.objects.create(workspace=ws, name=name or f"queue-{n()}", **kw)


def flow(ws, name=None, entrypoint="tests.flows:noop", **kw):
    f = Flow.objects.create(workspace=ws, name=name or f"flow-{n()}", **kw)
    f.register_version(entrypoint=entrypoint, version="1")
    return f


def schedule(flow_obj, **kw):
    defaults = {"slug": f"sched-{n()}", "kind": ScheduleKind.INTERVAL, "interval_seconds": 3600}
    return Schedule.objects.create(flow=flow_obj, **{**defaults, **kw})


def flow_run(flow_obj, state=State.SCHEDULED, **kw):
    now = timezone.now()
    defaults = {
        "workspace": flow_obj.workspace, "flow": flow_obj, "flow_version": flow_obj.latest_version,
        "state": state, "scheduled_start": now, "name": f"run-{n()}",
    }
    if state in (State.RUNNING, State.COMPLETED, State.FAILED, State.CRASHED, State.CANCELLING, State.PAUSED):
        defaults["start_time"] = now - timedelta(seconds=30)
    return FlowRun.objects.create(**{**defaults, **kw})


def task_run(run, state=State.RUNNING, **kw):
    defaults = {"flow_run": run, "task_key": f"task-{n()}", "state": state}
    return TaskRun.objects.create(**{**defaults, **kw})


def agent(ws, **kw):
    return Agent.objects.create(**{"workspace": ws, "name": f"agent-{n()}", **kw})


def secret(ws, name=None, value="s3cret-value"):
    from runs.models import Secret

    item = Secret(workspace=ws, name=name or f"SECRET_{n()}")
    item.set_value(value, "factory")
    item.save()
    return item
