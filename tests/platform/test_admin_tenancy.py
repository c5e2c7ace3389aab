"""The admin across two workspaces, for every registered model: a staff user who is admin of
workspace A, and in B either nothing or a viewer, must not list, add, change, delete or act on
B's rows, nor point a row of A at B's rows, whatever the form offers or a crafted POST says.

Forms are read from the page as a browser would (FormReader), filled in, and posted; each refusal
has a twin that succeeds in A, so a refusal cannot come from a bad form.
Rows outside workspaces (accounts, services, beat, users) are for superusers only.
"""

import datetime
from html.parser import HTMLParser

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model

from automations.models import Automation, Delivery, Firing, TriggerBucket
from events.models import Event, IncomingWebhook
from runs.models import (
    Account,
    Agent,
    ApiKey,
    AuditEntry,
    DeletionJob,
    Flow,
    FlowRun,
    FlowVersion,
    Log,
    Membership,
    Role,
    Schedule,
    ScheduleStatus,
    Secret,
    State,
    StateChange,
    TaskRun,
    TaskRunUsage,
    WorkQueue,
    Workspace,
)
from tests import factories

# The models whose rows belong to a workspace, and how the URL names them.
SCOPED = [Workspace, Membership, ApiKey, Flow, FlowVersion, Schedule, FlowRun, TaskRun, StateChange, Log,
          WorkQueue, Agent, Event, Secret, AuditEntry, Automation, Firing, TriggerBucket, Delivery,
          IncomingWebhook, TaskRunUsage, DeletionJob]
# Rows a workspace's viewers may not read (members, keys and the audit trail are for its admins,
# secrets' names for operators, as in the API).
ADMINS_READ = {Membership, ApiKey, AuditEntry, Secret, IncomingWebhook, DeletionJob}
# The models a workspace admin may add rows of in the admin.
ADDABLE = [Membership, ApiKey, Flow, FlowVersion, Schedule, FlowRun, TaskRun, WorkQueue, Agent, Secret, Automation,
           IncomingWebhook]
# Reference fields of each addable/changeable model, and the row of the world each points at.
REFERENCES = {
    Membership: {"workspace": "ws"},
    ApiKey: {"workspace": "ws", "user": "member"},
    Flow: {"workspace": "ws"},
    FlowVersion: {"flow": "flow"},
    Schedule: {"flow": "flow", "work_queue": "queue"},
    FlowRun: {"workspace": "ws", "flow": "flow", "flow_version": "version", "schedule": "schedule",
              "work_queue": "queue", "parent_task_run": "task_run"},
    TaskRun: {"flow_run": "run"},
    WorkQueue: {"workspace": "ws"},
    Agent: {"workspace": "ws", "queues": "queue"},
    Secret: {"workspace": "ws"},
    Automation: {"workspace": "ws"},
    IncomingWebhook: {"workspace": "ws"},
    Workspace: {},
}
# What a new row needs besides its references.
NEW_VALUES = {
    Membership: lambda world: {"user": world["outsider"].pk, "role": "admin"},
    ApiKey: lambda world: {"name": "new-key", "role": "viewer"},
    Flow: lambda world: {"name": "new-flow"},
    FlowVersion: lambda world: {"version": "9", "entrypoint": "tests.flows:noop"},
    Schedule: lambda world: {"slug": "new-schedule", "kind": "interval", "interval_seconds": "3600"},
    FlowRun: lambda world: {"name": "new-run", "state": "SCHEDULED"},
    TaskRun: lambda world: {"task_key": "new-task", "state": "PENDING"},
    WorkQueue: lambda world: {"name": "new-queue"},
    Agent: lambda world: {"name": "new-agent"},
    Secret: lambda world: {"name": "NEW_SECRET", "value": "s3cret"},
    Automation: lambda world: {"name": "new-automation", "actions": "[]", "trigger": (
        '{"type": "event", "posture": "reactive", "match": {"name": ["service.failed"]}}')},
    IncomingWebhook: lambda world: {"name": "new-hook", "template": "{}"},
}


def url(model, suffix=""):
    return f"/admin/{model._meta.app_label}/{model._meta.model_name}/{suffix}"


def world(ws):
    """One row of every scoped model in `ws`, by name."""
    flow = factories.flow(ws)
    queue = factories.work_queue(ws)
    schedule = factories.schedule(flow, work_queue=queue)
    run = factories.flow_run(flow, state=State.RUNNING, work_queue=queue, schedule=schedule)
    task_run = factories.task_run(run)
    agent = factories.agent(ws)
    agent.queues.add(queue)
    member = factories.member(ws, role=Role.VIEWER)
    automation = Automation.objects.get(workspace=ws, default_key="crash-silent-runs")
    return {
        "ws": ws, "flow": flow, "version": flow.latest_version, "queue": queue, "schedule": schedule, "run": run,
        "task_run": task_run, "agent": agent, "member": member, "outsider": factories.user(),
        "membership": Membership.objects.get(user=member, workspace=ws),
        "key": factories.api_key(ws, role=Role.OPERATOR)[0],
        "change": StateChange.objects.create(flow_run=run, from_state="", to_state=State.RUNNING),
        "log": Log.objects.create(workspace=ws, flow_run=run, message="hello"),
        "event": Event.objects.create(workspace=ws, name="flow-run.state.running"),
        "secret": factories.secret(ws, name="DB_PASSWORD"),
        "webhook": IncomingWebhook.objects.create(workspace=ws, name="deploys"),
        "audit": AuditEntry.objects.create(workspace=ws, actor="ada", via="api", action="schedule.pause",
                                           target_type="schedule"),
        "automation": automation,
        "firing": Firing.objects.create(automation=automation, workspace=ws, reason="silence"),
        "bucket": TriggerBucket.objects.create(automation=automation, key="flow-run:1"),
        "delivery": Delivery.objects.create(workspace=ws, kind="webhook", target="https://example.com/hook"),
        "usage": TaskRunUsage.objects.create(workspace=ws, month=datetime.date(2026, 12, 1), shard=0, completed=1),
        "deletion": DeletionJob.objects.create(workspace=ws, workspace_name=str(ws), target_type="flow",
                                               target_id="1", target_name="gone", requested_by="ada", via="api"),
    }


def row_of(model, world):
    """The row of `model` in `world`."""
    return {Workspace: world["ws"], Membership: world["membership"], ApiKey: world["key"], Flow: world["flow"],
            FlowVersion: world["version"], Schedule: world["schedule"], FlowRun: world["run"],
            TaskRun: world["task_run"], StateChange: world["change"], Log: world["log"], WorkQueue: world["queue"],
            Agent: world["agent"], Event: world["event"], Secret: world["secret"], AuditEntry: world["audit"],
            Automation: world["automation"], Firing: world["firing"], TriggerBucket: world["bucket"],
            Delivery: world["delivery"],
            IncomingWebhook: world["webhook"], TaskRunUsage: world["usage"], DeletionJob: world["deletion"]}[model]


def snapshot(model, row):
    """What a change could alter: every concrete field, and many-to-many ids."""
    row = model.objects.get(pk=row.pk)
    values = {f.attname: getattr(row, f.attname) for f in model._meta.concrete_fields}
    values.update({f.name: sorted(o.pk for o in getattr(row, f.name).all()) for f in model._meta.many_to_many})
    return values


class FormReader(HTMLParser):
    """The fields of the admin's form as a browser would post them."""

    def __init__(self):
        super().__init__()
        self.data, self.in_form, self.select, self.textarea = {}, False, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id", "").endswith("_form"):
            self.in_form = True
        if not self.in_form:
            return
        name = attrs.get("name")
        if tag == "input" and name and attrs.get("type") not in ("submit", "button", "file"):
            if attrs.get("type") in ("checkbox", "radio"):
                if "checked" in attrs:
                    self.data.setdefault(name, []).append(attrs.get("value", "on"))
            else:
                self.data[name] = [attrs.get("value", "")]
        elif tag == "select" and name:
            self.select = name
            self.data.setdefault(name, [])
        elif tag == "option" and self.select and "selected" in attrs:
            self.data[self.select].append(attrs.get("value", ""))
        elif tag == "textarea" and name:
            self.textarea = name
            self.data[name] = [""]

    def handle_data(self, data):
        if self.textarea:
            self.data[self.textarea][0] += data

    def handle_endtag(self, tag):
        if tag == "select":
            self.select = None
        elif tag == "textarea":
            self.textarea = None
        elif tag == "form":
            self.in_form = False


def read_form(client, path):
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    reader = FormReader()
    reader.feed(response.content.decode())
    data = {name: values if len(values) != 1 else values[0] for name, values in reader.data.items()}
    for name, value in list(data.items()):
        if value == [] or (name.endswith(("-TOTAL_FORMS", "-INITIAL_FORMS")) and value == ""):
            data.pop(name)
    data.pop("csrfmiddlewaretoken", None)
    return response, data


def reference_value(world, name, field):
    value = world[name]
    return [str(value.pk)] if field == "queues" else str(value.pk)


def staff(ws, role=Role.ADMIN):
    user = factories.member(ws, role=role)
    user.is_staff = True
    user.save()
    return user


@pytest.fixture(params=[None, Role.VIEWER], ids=["no-role-in-B", "viewer-of-B"])
def tenant(request, client, ws, other_ws):
    """(client logged in as admin of A, A's world, B's world, the user's role in B)."""
    user = staff(ws)
    if request.param:
        Membership.objects.create(user=user, workspace=other_ws, role=request.param)
    a, b = world(ws), world(other_ws)
    client.force_login(user)
    return client, a, b, request.param


def sees_in_b(model, b_role):
    return b_role is not None and model not in ADMINS_READ


def test_every_registered_model_has_its_row_in_this_matrix():
    registered = set(admin.site._registry)
    assert registered - set(SCOPED) == set(PLATFORM), "a registered model without a row here"


@pytest.mark.parametrize("model", SCOPED, ids=lambda m: m.__name__)
def test_the_list_shows_only_rows_of_workspaces_the_user_may_read(tenant, model):
    client, a, b, b_role = tenant
    response = client.get(url(model))
    assert response.status_code == 200
    listed = {row.pk for row in response.context["cl"].result_list}
    assert row_of(model, a).pk in listed
    assert (row_of(model, b).pk in listed) == sees_in_b(model, b_role)
    # Nor do the list's filters offer B's workspace, flows or queues.
    for spec in response.context["cl"].filter_specs:
        related = getattr(getattr(spec, "field", None), "related_model", None)
        if related in (Workspace, Flow, WorkQueue) and not sees_in_b(related, b_role):
            assert row_of(related, b).pk not in [pk for pk, _ in spec.lookup_choices], spec.title


@pytest.mark.parametrize("model", SCOPED, ids=lambda m: m.__name__)
def test_b_rows_cannot_be_changed_or_deleted(tenant, model):
    client, a, b, b_role = tenant
    row = row_of(model, b)
    before = snapshot(model, row)
    page = client.get(url(model, f"{row.pk}/change/"))
    if sees_in_b(model, b_role):
        assert page.status_code == 200 and not page.context["has_change_permission"]  # read-only
    else:
        assert page.status_code == 302  # "does not exist", as for any row not in reach
    form = {"name": "renamed", "slug": "renamed", "role": "admin", "_save": "Save"}
    assert client.post(url(model, f"{row.pk}/change/"), form).status_code in (302, 403)
    assert client.post(url(model, f"{row.pk}/delete/"), {"post": "yes"}).status_code in (302, 403)
    assert client.post(url(model), {"action": "delete_selected", ACTION_CHECKBOX_NAME: [str(row.pk)],
                                    "post": "yes"}).status_code in (200, 302, 403)
    assert snapshot(model, row) == before


@pytest.mark.parametrize("model", ADDABLE, ids=lambda m: m.__name__)
def test_add_forms_offer_only_rows_of_workspaces_the_user_administers(tenant, model):
    client, a, b, _ = tenant
    form = client.get(url(model, "add/")).context["adminform"].form
    for field, name in REFERENCES[model].items():
        offered = {str(pk) for pk in form.fields[field].queryset.values_list("pk", flat=True)}
        assert str(a[name].pk) in offered, field
        assert str(b[name].pk) not in offered, field


@pytest.mark.parametrize("model", ADDABLE, ids=lambda m: m.__name__)
def test_a_crafted_add_naming_b_is_refused_and_the_same_in_a_is_saved(tenant, model):
    client, a, b, _ = tenant
    _, blank = read_form(client, url(model, "add/"))
    valid = {**blank, **{f: reference_value(a, n, f) for f, n in REFERENCES[model].items()},
             **NEW_VALUES[model](a), "_save": "Save"}
    for field, name in REFERENCES[model].items():
        count = model.objects.count()
        crafted = {**valid, field: reference_value(b, name, field)}
        response = client.post(url(model, "add/"), crafted)
        assert response.status_code in (200, 403), (field, response.status_code)
        if response.status_code == 200:
            assert field in response.context["adminform"].form.errors, field
        assert model.objects.count() == count, field
    count = model.objects.count()
    response = client.post(url(model, "add/"), valid)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    assert model.objects.count() == count + 1  # the same form in A is saved


@pytest.mark.parametrize("model", ADDABLE, ids=lambda m: m.__name__)
def test_a_row_of_a_cannot_be_pointed_at_b_and_unchanged_it_saves(tenant, model):
    client, a, b, _ = tenant
    row = row_of(model, a)
    _, current = read_form(client, url(model, f"{row.pk}/change/"))
    current["_save"] = "Save"
    before = snapshot(model, row)
    for field, name in REFERENCES[model].items():
        crafted = {**current, field: reference_value(b, name, field)}
        response = client.post(url(model, f"{row.pk}/change/"), crafted)
        # Refused; or, where the change form shows the field read-only (a secret's workspace), ignored.
        assert response.status_code in ((200, 403) if field in current else (200, 302, 403)), (field, response)
        assert snapshot(model, row) == before, field
    response = client.post(url(model, f"{row.pk}/change/"), current)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response


@pytest.mark.parametrize("model", [m for m in ADDABLE if len(REFERENCES[m]) > 1], ids=lambda m: m.__name__)
def test_an_admin_of_both_workspaces_cannot_mix_their_rows_in_one_row(client, ws, other_ws, model):
    """Both workspaces are offered, but a row of A pointing at B's rows is refused, naming the field."""
    user = staff(ws)
    Membership.objects.create(user=user, workspace=other_ws, role=Role.ADMIN)
    client.force_login(user)
    a, b = world(ws), world(other_ws)
    _, blank = read_form(client, url(model, "add/"))
    valid = {**blank, **{f: reference_value(a, n, f) for f, n in REFERENCES[model].items()},
             **NEW_VALUES[model](a), "_save": "Save"}
    home = next(iter(REFERENCES[model]))  # the field that says the row's workspace
    for field, name in list(REFERENCES[model].items())[1:]:
        count = model.objects.count()
        response = client.post(url(model, "add/"), {**valid, field: reference_value(b, name, field)})
        assert response.status_code == 200 and field in response.context["adminform"].form.errors, field
        assert model.objects.count() == count, field
    if model is ApiKey:
        return  # a service key points at nothing else in A: moving it to B, also theirs, leaves nothing mixed
    row = row_of(model, a)  # moved to B, it would keep pointing at A's rows
    _, current = read_form(client, url(model, f"{row.pk}/change/"))
    before = snapshot(model, row)
    response = client.post(url(model, f"{row.pk}/change/"), {**current, home: reference_value(b, REFERENCES[model][
        home], home), "_save": "Save"})
    assert response.status_code == 200 and snapshot(model, row) == before


@pytest.mark.parametrize("model", ADDABLE, ids=lambda m: m.__name__)
def test_saves_are_rechecked_on_the_server_whatever_the_form_let_through(rf, ws, other_ws, model):
    """The last line: a row of B reaching save_model (say, through a form a subclass loosened) is refused."""
    from django.core.exceptions import PermissionDenied

    request = rf.post("/")
    request.user = staff(ws)
    row = row_of(model, world(other_ws))
    with pytest.raises(PermissionDenied):
        admin.site._registry[model].save_model(request, row, form=None, change=True)


def test_the_confirmed_defect_an_admin_of_a_cannot_make_themselves_admin_of_b(client, ws, other_ws):
    user = staff(ws)
    client.force_login(user)
    response = client.post(url(Membership, "add/"), {"user": user.pk, "workspace": other_ws.pk, "role": "admin",
                                                      "created_0": "2026-11-29", "created_1": "08:00:00"})
    assert response.status_code == 200 and "workspace" in response.context["adminform"].form.errors
    assert not Membership.objects.filter(user=user, workspace=other_ws).exists()


def test_adding_a_member_asks_no_creation_time(client, ws):
    client.force_login(staff(ws))
    newcomer = factories.user()
    response = client.post(url(Membership, "add/"), {"user": newcomer.pk, "workspace": ws.pk, "role": "viewer"})
    assert response.status_code == 302
    assert Membership.objects.get(user=newcomer).created is not None


def test_an_api_key_cannot_be_issued_in_b_nor_moved_there(client, ws, other_ws):
    client.force_login(staff(ws))
    response = client.post(url(ApiKey, "add/"), {"workspace": other_ws.pk, "name": "sneaky", "role": "admin"})
    assert response.status_code == 200 and not ApiKey.objects.filter(name="sneaky").exists()
    key = factories.api_key(ws, role=Role.VIEWER)[0]
    client.post(url(ApiKey, f"{key.pk}/change/"), {"workspace": other_ws.pk, "name": key.name, "role": "admin"})
    key.refresh_from_db()
    assert key.workspace == ws and key.role == Role.VIEWER


def test_workspace_admins_neither_add_workspaces_nor_move_theirs_to_another_account(client, ws, other_ws):
    client.force_login(staff(ws))
    assert client.get(url(Workspace, "add/")).status_code == 403
    _, current = read_form(client, url(Workspace, f"{ws.pk}/change/"))
    assert "account" not in current  # shown read-only
    client.post(url(Workspace, f"{ws.pk}/change/"), {**current, "account": other_ws.account_id, "_save": "Save"})
    assert Workspace.objects.get(pk=ws.pk).account_id == ws.account_id


def test_workspace_page_members_are_managed_by_its_admins_only(client, ws, other_ws):
    user = staff(ws)
    Membership.objects.create(user=user, workspace=other_ws, role=Role.VIEWER)
    client.force_login(user)
    assert client.get(url(Workspace, f"{ws.pk}/change/")).context["inline_admin_formsets"]
    assert not client.get(url(Workspace, f"{other_ws.pk}/change/")).context["inline_admin_formsets"]


# --- actions ------------------------------------------------------------------------------------

ACTIONS = [
    (ApiKey, "revoke", "key", lambda key: key.revoked_at is None),
    (Flow, "run_now", "flow", lambda flow: FlowRun.objects.filter(flow=flow).count() == 1),
    (Schedule, "pause", "schedule", lambda s: s.status == ScheduleStatus.ACTIVE),
    (Schedule, "resume", "schedule", lambda s: s.status == ScheduleStatus.PAUSED),
    (Schedule, "run_now", "schedule", lambda s: FlowRun.objects.filter(flow=s.flow).count() == 1),
    (FlowRun, "cancel", "run", lambda run: run.state == State.RUNNING),
    (FlowRun, "mark_failed", "run", lambda run: run.state == State.RUNNING),
]


@pytest.mark.parametrize("model, action, name, untouched", ACTIONS, ids=[f"{a[0].__name__}-{a[1]}" for a in ACTIONS])
def test_actions_leave_b_rows_alone(tenant, model, action, name, untouched):
    client, a, b, _ = tenant
    if action == "resume":
        Schedule.objects.filter(pk=b[name].pk).update(status=ScheduleStatus.PAUSED)
    client.post(url(model), {"action": action, ACTION_CHECKBOX_NAME: [str(b[name].pk)], "confirmed": "yes"})
    assert untouched(model.objects.get(pk=b[name].pk))


def test_actions_still_act_in_a(tenant):
    client, a, b, _ = tenant
    client.post(url(ApiKey), {"action": "revoke", ACTION_CHECKBOX_NAME: [str(a["key"].pk)]})
    client.post(url(FlowRun), {"action": "mark_failed", ACTION_CHECKBOX_NAME: [str(a["run"].pk)]})
    assert ApiKey.objects.get(pk=a["key"].pk).revoked_at is not None
    assert FlowRun.objects.get(pk=a["run"].pk).state == State.FAILED


# --- rows outside workspaces, and superusers ----------------------------------------------------

def _platform_models():
    from django.contrib.auth.models import Group
    from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

    from services.models import ServiceLease, ServicePass, ServiceSchedule

    return [Account, get_user_model(), Group, ServicePass, ServiceLease, ServiceSchedule, PeriodicTask,
            IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule]


PLATFORM = _platform_models()


@pytest.mark.parametrize("model", [m for m in PLATFORM if m is not Account], ids=lambda m: m.__name__)
def test_rows_outside_workspaces_are_not_for_workspace_admins(client, ws, model):
    client.force_login(staff(ws))
    assert client.get(url(model)).status_code == 403
    assert client.get(url(model, "add/")).status_code == 403


def test_accounts_are_seen_by_their_members_and_changed_by_superusers_only(client, ws, other_ws):
    client.force_login(staff(ws))
    listed = {a.pk for a in client.get(url(Account)).context["cl"].result_list}
    assert listed == {ws.account_id}
    assert client.get(url(Account, "add/")).status_code == 403
    client.post(url(Account, f"{ws.account_id}/change/"), {"name": "renamed", "slug": "renamed"})
    assert Account.objects.get(pk=ws.account_id).slug == ws.account.slug


def test_superusers_keep_full_access(admin_client, ws, other_ws):
    b = world(other_ws)
    response = admin_client.post(url(Membership, "add/"), {"user": factories.user().pk, "workspace": other_ws.pk,
                                                           "role": "admin"})
    assert response.status_code == 302
    assert {FlowRun.objects.get(pk=b["run"].pk).pk} <= {r.pk for r in admin_client.get(url(FlowRun)).context[
        "cl"].result_list}
    for model in PLATFORM:
        assert admin_client.get(url(model)).status_code == 200, model
    admin_client.post(url(FlowRun), {"action": "mark_failed", ACTION_CHECKBOX_NAME: [str(b["run"].pk)]})
    assert FlowRun.objects.get(pk=b["run"].pk).state == State.FAILED
