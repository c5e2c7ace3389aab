"""Changes that must not escape the audit trail, nor leave an entry that cannot name its target."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from runs import actions
from runs.audit import Who
from runs.models import ApiKey, AuditEntry, Membership, Role, WorkQueue
from tests import factories


def test_an_agent_registering_a_new_queue_leaves_an_audit_entry(ws, prefix):
    """Register creates the work queues an agent names (the queue API is for admins): the queue is
    created through the actions layer, and the trail says which agent key did it."""
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.api_key(ws, role=Role.AGENT, name='box-key')[1]}")
    answer = agent.post(f"{prefix}/agent/register", {"name": "box", "queues": ["gpu-shadow", "default"]},
                        format="json")
    assert answer.status_code == 201
    assert WorkQueue.objects.filter(workspace=ws, name="gpu-shadow").exists()
    [entry] = AuditEntry.objects.filter(workspace=ws, target_type="work_queue", target_name="gpu-shadow")
    assert (entry.action, entry.actor, entry.via) == ("work_queue.create", "api-key:box-key", "api")
    # Registering again creates nothing, and records nothing.
    agent.post(f"{prefix}/agent/register", {"name": "box", "queues": ["gpu-shadow", "default"]}, format="json")
    assert AuditEntry.objects.filter(workspace=ws, target_type="work_queue").count() == 2


def test_a_member_removed_in_the_workspace_admins_inline_is_named_by_its_entry(admin_client, ws):
    """WorkspaceScopedAdmin.save_formset records deleted inline objects after the delete, when
    Django has set their pk to None: the entry's target_id is empty."""
    keep = factories.member(ws, role=Role.ADMIN)
    gone = factories.member(ws, role=Role.VIEWER)
    rows = list(Membership.objects.filter(workspace=ws).order_by("pk"))
    data = {"account": ws.account_id, "name": ws.name, "slug": ws.slug, "run_retention_days": ws.run_retention_days,
            "event_retention_days": ws.event_retention_days,
            "created_0": timezone.now().strftime("%Y-%m-%d"), "created_1": timezone.now().strftime("%H:%M:%S"),
            "memberships-TOTAL_FORMS": str(len(rows)), "memberships-INITIAL_FORMS": str(len(rows)),
            "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000"}
    for i, row in enumerate(rows):
        data.update({f"memberships-{i}-id": row.pk, f"memberships-{i}-workspace": ws.pk,
                     f"memberships-{i}-user": row.user_id, f"memberships-{i}-role": row.role,
                     f"memberships-{i}-created_0": row.created.strftime("%Y-%m-%d"),
                     f"memberships-{i}-created_1": row.created.strftime("%H:%M:%S")})
        if row.user_id == gone.pk:
            data[f"memberships-{i}-DELETE"] = "on"
            gone_pk = row.pk
    answer = admin_client.post(f"/admin/runs/workspace/{ws.pk}/change/", data)
    assert answer.status_code == 302, re.findall(r"errorlist[^>]*>(.{0,300})", answer.content.decode())
    assert not Membership.objects.filter(pk=gone_pk).exists() and Membership.objects.filter(user=keep).exists()
    [entry] = AuditEntry.objects.filter(action="membership.remove")  # the API's name for it too
    assert entry.target_id == str(gone_pk), f"the entry names target_id {entry.target_id!r}"


def test_revoking_many_keys_writes_their_entries_in_a_constant_number_of_queries(ws):
    """runs/actions.py revoke_keys: one INSERT per key (audit.record in a loop); the admin's bulk
    revoke of 50 keys is 50 more queries than of one (the style rule: queries set-based)."""
    who = Who("tester", None, "cli")

    def queries_to_revoke(count):
        for i in range(count):
            factories.api_key(ws, name=f"k-{count}-{i}")
        with CaptureQueriesContext(connection) as captured:
            assert actions.revoke_keys(ApiKey.objects.filter(name__startswith=f"k-{count}-"), who=who) == count
        return len(captured)

    assert queries_to_revoke(1) == queries_to_revoke(20)


def test_one_change_has_one_action_name_whichever_door_it_came_through(admin_client, ws, prefix):
    """The API records a new member as `membership.add` (runs/actions.py), the admin as
    `membership.create` (WorkspaceScopedAdmin.save_model builds `<kind>.create`): filtering the trail
    by action (GET …/audit/?action=membership.add) misses every member added in the admin. Same for
    membership.remove/.delete, membership.role/.change, workspace.settings/.change."""
    person = factories.user()
    now = timezone.now()
    answer = admin_client.post("/admin/runs/membership/add/", {
        "user": person.pk, "workspace": ws.pk, "role": Role.VIEWER,
        "created_0": now.strftime("%Y-%m-%d"), "created_1": now.strftime("%H:%M:%S")})
    assert answer.status_code == 302, re.findall(r"errorlist[^>]*>(.{0,300})", answer.content.decode())
    assert list(AuditEntry.objects.values_list("action", flat=True)) == ["membership.add"]


def test_pausing_a_paused_schedule_records_no_second_pause(ws, prefix):
    """runs/actions.py pause_schedule (and resume_schedule) record an entry whatever the status was: a
    retried or double-clicked pause leaves `schedule.pause` PAUSED -> PAUSED, a change that did not happen."""
    admin = APIClient()
    admin.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.api_key(ws, role=Role.ADMIN)[1]}")
    schedule = factories.schedule(factories.flow(ws))
    for _ in range(2):
        assert admin.post(f"{prefix}/schedules/{schedule.pk}/pause/").status_code == 200
    entries = list(AuditEntry.objects.filter(action="schedule.pause").values_list("before", "after"))
    assert len(entries) == 1, entries


def test_an_admin_bulk_delete_that_fails_leaves_no_entries(admin_client, ws, monkeypatch):
    """WorkspaceScopedAdmin.delete_queryset writes one entry per object, then deletes; Django runs
    the `delete_selected` action outside any transaction (changelist_view is not atomic), so a
    delete that fails leaves entries for deletions that never happened."""
    from django.contrib import admin
    from django.db import DatabaseError

    queues = [factories.work_queue(ws) for _ in range(2)]

    def fails(self, request, queryset):
        raise DatabaseError("the delete failed (a lock timeout, a constraint, the connection)")

    monkeypatch.setattr(admin.ModelAdmin, "delete_queryset", fails)
    with pytest.raises(DatabaseError):
        admin_client.post("/admin/runs/workqueue/", {"action": "delete_selected", "post": "yes",
                                                     "_selected_action": [q.pk for q in queues]})
    assert WorkQueue.objects.filter(pk__in=[q.pk for q in queues]).count() == 2
    assert not AuditEntry.objects.filter(action="work_queue.delete").exists(), "entries for a delete that failed"
