"""The audit trail: every change to a workspace's setup (members, keys, settings, schedules, queues,
secrets) leaves an entry saying who, what, when, before and after, whether made over the API, in
the admin, in the dashboard or by a command; workspace admins read it, nobody else does."""

from io import StringIO

import pytest
from django.core.management import call_command

from runs.models import AuditEntry, Membership, Role, Schedule, WorkQueue
from tests import factories


def entries(ws, action=None):
    found = AuditEntry.objects.filter(workspace=ws).order_by("occurred", "id")
    if action:
        found = found.filter(action=action)
    return list(found.values("action", "actor", "via", "target_type", "before", "after"))


def test_members_roles_and_keys_over_the_api(admin, prefix, ws):
    person = factories.user(username="grace")
    added = admin.post(f"{prefix}/members/", {"user": "grace", "role": "viewer"}, format="json")
    assert added.status_code == 201
    member = Membership.objects.get(user=person, workspace=ws)
    assert admin.patch(f"{prefix}/members/{member.pk}/", {"role": "operator"}, format="json").status_code == 200
    assert admin.delete(f"{prefix}/members/{member.pk}/").status_code == 204
    key = admin.post(f"{prefix}/api_keys/", {"name": "ci", "role": "operator"}, format="json").json()
    assert admin.delete(f"{prefix}/api_keys/{key['id']}/").status_code == 204

    trail = entries(ws)
    assert [e["action"] for e in trail] == ["membership.add", "membership.role", "membership.remove",
                                           "api_key.issue", "api_key.revoke"]
    assert {e["via"] for e in trail} == {"api"} and len({e["actor"] for e in trail}) == 1
    assert trail[0]["actor"].startswith("api-key:")
    assert trail[1]["before"] == {"role": "viewer"} and trail[1]["after"] == {"role": "operator"}
    assert trail[2]["before"]["role"] == "operator"
    assert key["secret"] not in str(trail[3]) and trail[3]["after"]["prefix"] == key["prefix"]
    assert trail[4]["before"] == {"revoked_at": None} and trail[4]["after"]["revoked_at"]


def test_settings_schedules_and_queues_over_the_api(admin, prefix, ws):
    assert admin.patch(f"{prefix}/settings", {"run_retention_days": 90}, format="json").status_code == 200
    flow = factories.flow(ws)
    created = admin.post(f"{prefix}/schedules/", {"flow": flow.name, "slug": "hourly", "kind": "interval",
                                                  "interval_seconds": 3600}, format="json")
    assert created.status_code == 201, created.content
    schedule_id = created.json()["id"]
    admin.patch(f"{prefix}/schedules/{schedule_id}/", {"interval_seconds": 600}, format="json")
    admin.post(f"{prefix}/schedules/{schedule_id}/pause/")
    admin.post(f"{prefix}/schedules/{schedule_id}/resume/")
    admin.delete(f"{prefix}/schedules/{schedule_id}/")
    queue = admin.post(f"{prefix}/work_queues/", {"name": "gpu"}, format="json").json()
    admin.post(f"{prefix}/work_queues/{queue['id']}/pause/")
    admin.post(f"{prefix}/work_queues/{queue['id']}/concurrency_limit/", {"concurrency_limit": 2}, format="json")
    admin.delete(f"{prefix}/work_queues/{queue['id']}/")

    trail = entries(ws)
    assert [e["action"] for e in trail] == [
        "workspace.settings", "schedule.create", "schedule.change", "schedule.pause", "schedule.resume",
        "schedule.delete", "work_queue.create", "work_queue.pause", "work_queue.limit", "work_queue.delete"]
    assert trail[0]["before"] == {"run_retention_days": 30} and trail[0]["after"] == {"run_retention_days": 90}
    assert trail[2]["before"] == {"interval_seconds": 3600} and trail[2]["after"] == {"interval_seconds": 600}
    assert trail[3]["after"]["status"] == "PAUSED" and "runs_deleted" in trail[3]["after"]
    assert trail[8]["after"] == {"concurrency_limit": 2}


def test_a_refused_change_leaves_no_entry_and_an_unchanged_one_none(admin, prefix, ws):
    flow = factories.flow(ws)
    bad = admin.post(f"{prefix}/schedules/", {"flow": flow.name, "slug": "never", "kind": "cron",
                                              "cron": "0 0 31 2 *"}, format="json")
    assert bad.status_code == 400
    assert admin.patch(f"{prefix}/settings", {"run_retention_days": 30}, format="json").status_code == 200
    assert entries(ws) == []


def test_secrets_are_audited_without_their_values(admin, prefix, ws):
    admin.post(f"{prefix}/secrets/", {"name": "DB_PASSWORD", "value": "pa55word-xyz"}, format="json")
    admin.put(f"{prefix}/secrets/DB_PASSWORD/", {"value": "n3w-pa55word-xyz"}, format="json")
    admin.delete(f"{prefix}/secrets/DB_PASSWORD/")
    trail = entries(ws)
    assert [e["action"] for e in trail] == ["secret.create", "secret.change", "secret.delete"]
    assert "pa55word" not in str(trail)


def test_only_workspace_admins_read_the_trail(api, key_for, prefix, ws, other_ws):
    AuditEntry.objects.create(workspace=ws, actor="ada", via="api", action="schedule.pause", target_type="schedule")
    AuditEntry.objects.create(workspace=other_ws, actor="eve", via="api", action="schedule.pause",
                              target_type="schedule")
    assert api.as_key(key_for(Role.OPERATOR)).get(f"{prefix}/audit/").status_code == 403
    answer = api.as_key(key_for(Role.ADMIN)).get(f"{prefix}/audit/?action=schedule")
    assert answer.status_code == 200 and [e["actor"] for e in answer.json()["results"]] == ["ada"]


def test_admin_pages_and_actions_are_audited_too(client, ws):
    staff = factories.member(ws, role=Role.ADMIN, is_staff=True, username="lin")
    client.force_login(staff)
    queue = WorkQueue.objects.create(workspace=ws, name="q")
    changed = client.post(f"/admin/runs/workqueue/{queue.pk}/change/",
                          {"workspace": ws.pk, "name": "q", "work_pool": "", "description": "now described",
                           "job_env": "{}", "concurrency_limit": "",
                           # Ignored where the form shows `created` read-only; required where it does not.
                           "created_0": f"{queue.created:%Y-%m-%d}", "created_1": f"{queue.created:%H:%M:%S}"})
    assert changed.status_code == 302, changed.context and changed.context["adminform"].form.errors
    schedule = factories.schedule(factories.flow(ws), slug="nightly")
    paused = client.post("/admin/runs/schedule/", {"action": "pause", "_selected_action": [schedule.pk],
                                                   "confirmed": "yes"})
    assert paused.status_code in (200, 302)
    assert Schedule.objects.get(pk=schedule.pk).status == "PAUSED"
    trail = entries(ws)
    assert [(e["action"], e["via"], e["actor"]) for e in trail] == [
        ("work_queue.change", "admin", "lin"), ("schedule.pause", "admin", "lin")]
    assert trail[0]["after"] == {"description": "now described"}


def test_the_dashboard_pause_is_audited(client, ws):
    operator = factories.member(ws, role=Role.OPERATOR, username="omar")
    client.force_login(operator)
    schedule = factories.schedule(factories.flow(ws), slug="nightly")
    assert client.post(f"/dashboard/schedules/{schedule.pk}/pause/").status_code == 302  # without htmx: back to the list
    assert [(e["action"], e["via"], e["actor"]) for e in entries(ws)] == [("schedule.pause", "dashboard", "omar")]


def test_a_key_issued_on_the_command_line_is_audited(ws):
    call_command("create_api_key", f"{ws.account.slug}/{ws.slug}", "--name", "bootstrap", "--role", "admin",
                 stdout=StringIO())
    [entry] = entries(ws)
    assert (entry["action"], entry["via"], entry["actor"]) == ("api_key.issue", "cli", "manage.py create_api_key")


@pytest.mark.parametrize("retention_days, kept", [(30, 1), (1, 0)])
def test_entries_past_the_workspaces_retention_are_deleted(ws, retention_days, kept):
    from datetime import timedelta

    from django.utils import timezone

    from services import audit_retention

    ws.run_retention_days = retention_days
    ws.save()
    now = timezone.now()
    AuditEntry.objects.create(workspace=ws, occurred=now - timedelta(days=5), actor="a", via="api",
                              action="schedule.pause", target_type="schedule")
    AuditEntry.objects.create(workspace=ws, occurred=now, actor="a", via="api", action="schedule.pause",
                              target_type="schedule")
    result = audit_retention.run_once(now)
    assert AuditEntry.objects.filter(workspace=ws).count() == kept + 1
    assert result["entries_deleted"] == 1 - kept
    assert audit_retention.run_once(now)["entries_deleted"] == 0  # safe twice


def test_the_dashboard_shows_admins_their_workspaces_trail_and_nobody_else(client, ws, other_ws,
                                                                          django_assert_max_num_queries):
    for i in range(30):
        AuditEntry.objects.create(workspace=ws, actor="ada", via="api", action="schedule.pause",
                                  target_type="schedule", target_name=f"mine-{i}", after={"status": "PAUSED"})
    AuditEntry.objects.create(workspace=other_ws, actor="eve", via="api", action="secret.create",
                              target_type="secret", target_name="theirs")
    admin_user = factories.member(ws, role=Role.ADMIN)
    client.force_login(admin_user)
    with django_assert_max_num_queries(8):  # not one per entry
        page = client.get("/dashboard/audit/")
    text = page.content.decode()
    assert page.status_code == 200 and "mine-29" in text and "mine-0" in text and "theirs" not in text
    assert "mine-3" not in client.get("/dashboard/audit/?kind=secret").content.decode()

    client.force_login(factories.member(ws, role=Role.OPERATOR))
    text = client.get("/dashboard/audit/").content.decode()
    assert "mine-" not in text and "admin of no workspace" in text
