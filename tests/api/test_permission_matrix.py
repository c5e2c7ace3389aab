"""Each caller (viewer, operator, admin, agent, no key, revoked key) × each endpoint × own and foreign
workspace.

The expected status comes from a table: the role an endpoint needs, and the status it answers on
success. A caller below that role gets 403; a workspace the caller has no role in is 404; no key
or a revoked key is 401. The agent role is off the ladder: an agent key may call the agents'
endpoints and nothing else, and no other role may call those. The table must name every operation of the OpenAPI schema, so a new
endpoint cannot ship without its row.
"""

import re

import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from automations.models import Automation, Delivery
from events.models import IncomingWebhook
from runs.api.schema import WORKSPACE_PREFIX
from runs.models import AuditEntry, DeletionJob, FlowRun, Log, Membership, Role
from runs.run_tokens import token_of
from tests import factories
from tests.conftest import api_prefix

V, O, A, AG = Role.VIEWER, Role.OPERATOR, Role.ADMIN, Role.AGENT
# Reports about one run: only with that run's report token (from the claim), never an API key.
R = "run token"

# (name, method, path under the workspace, body, role needed, success status)
ENDPOINTS = [
    ("ping", "get", "ping", None, V, 200),
    ("settings read", "get", "settings", None, V, 200),
    ("settings change", "patch", "settings", {"run_retention_days": 60}, A, 200),
    ("usage read", "get", "usage", None, V, 200),
    ("flows list", "get", "flows/", None, V, 200),
    ("flow detail", "get", "flows/{flow}/", None, V, 200),
    ("flow create", "post", "flows/", {"name": "new-flow"}, O, 201),
    ("flow edit", "patch", "flows/{flow}/", {"description": "d"}, O, 200),
    ("flow versions", "get", "flows/{flow}/versions/", None, V, 200),
    ("flow register version", "post", "flows/{flow}/versions/", {"entrypoint": "m:f"}, O, 201),
    ("flow delete", "delete", "flows/{flow}/", None, A, 202),
    ("flow versions of the workspace", "get", "flow_versions/", None, V, 200),
    ("flow version detail", "get", "flow_versions/{version}/", None, V, 200),
    ("flow versions compared", "get", "flow_versions/compare/?base={version}&head={version}", None, V, 200),
    ("schedules list", "get", "schedules/", None, V, 200),
    ("schedule detail", "get", "schedules/{schedule}/", None, V, 200),
    ("schedule create", "post", "schedules/",
     {"flow": "{flow_name}", "slug": "new", "kind": "interval", "interval_seconds": 3600}, A, 201),
    ("schedule replace", "put", "schedules/{schedule}/",
     {"flow": "{flow_name}", "slug": "renamed", "kind": "cron", "cron": "0 2 * * *"}, A, 200),
    ("schedule edit", "patch", "schedules/{schedule}/", {"interval_seconds": 600}, A, 200),
    ("schedule preview", "post", "schedules/preview/", {"kind": "cron", "cron": "0 2 * * *", "count": 2}, V, 200),
    ("schedule pause", "post", "schedules/{schedule}/pause/", None, O, 200),
    ("schedule resume", "post", "schedules/{schedule}/resume/", None, O, 200),
    ("schedule pin", "post", "schedules/{schedule}/pin/", {"flow_version": "{version}"}, O, 200),
    ("schedule unpin", "post", "schedules/{schedule}/unpin/", None, O, 200),
    ("schedule delete", "delete", "schedules/{schedule}/", None, A, 202),
    ("flow runs list", "get", "flow_runs/", None, V, 200),
    ("flow run detail", "get", "flow_runs/{run}/", None, V, 200),
    ("flow run create", "post", "flow_runs/", {"flow": "{flow_name}"}, O, 201),
    ("flow run set state", "post", "flow_runs/{run}/set_state/", {"state": "FAILED"}, O, 200),
    ("flow run cancel", "post", "flow_runs/{run}/cancel/", None, O, 200),
    ("flow run retry", "post", "flow_runs/{finished_run}/retry/", None, O, 200),
    ("task runs list", "get", "task_runs/", None, V, 200),
    ("task run detail", "get", "task_runs/{task_run}/", None, V, 200),
    ("logs list", "get", "logs/?source=lazarus", None, V, 200),
    ("log detail", "get", "logs/{log}/", None, V, 200),
    ("logs download", "get", "logs/download/?flow_run={run}", None, V, 200),
    ("work queues list", "get", "work_queues/", None, V, 200),
    ("work queue detail", "get", "work_queues/{queue}/", None, V, 200),
    ("work queue create", "post", "work_queues/", {"name": "new-queue"}, A, 201),
    ("work queue edit", "patch", "work_queues/{queue}/", {"description": "d"}, A, 200),
    ("work queue pause", "post", "work_queues/{queue}/pause/", None, O, 200),
    ("work queue resume", "post", "work_queues/{queue}/resume/", None, O, 200),
    ("work queue limit", "post", "work_queues/{queue}/concurrency_limit/", {"concurrency_limit": 2}, O, 200),
    ("work queue delete", "delete", "work_queues/{queue}/", None, A, 204),
    ("secrets list", "get", "secrets/", None, O, 200),
    ("secret detail", "get", "secrets/{secret}/", None, O, 200),
    ("secret create", "post", "secrets/", {"name": "NEW_SECRET", "value": "s3cret"}, A, 201),
    ("secret replace", "put", "secrets/{secret}/", {"value": "n3w"}, A, 200),
    ("secret delete", "delete", "secrets/{secret}/", None, A, 204),
    ("audit list", "get", "audit/", None, A, 200),
    ("audit entry", "get", "audit/{audit}/", None, A, 200),
    ("deletion jobs", "get", "deletion_jobs/", None, A, 200),
    ("deletion job", "get", "deletion_jobs/{deletion_job}/", None, A, 200),
    ("deliveries list", "get", "deliveries/", None, V, 200),
    ("delivery detail", "get", "deliveries/{delivery}/", None, V, 200),
    ("delivery retry", "post", "deliveries/{delivery}/retry/", None, O, 200),
    ("events list", "get", "events/", None, V, 200),
    ("agents list", "get", "agents/", None, V, 200),
    ("agent detail", "get", "agents/{agent}/", None, V, 200),
    ("members list", "get", "members/", None, A, 200),
    ("member detail", "get", "members/{membership}/", None, A, 200),
    ("member add", "post", "members/", {"user": "{outsider}", "role": "viewer"}, A, 201),
    ("member change role", "patch", "members/{membership}/", {"role": "operator"}, A, 200),
    ("member remove", "delete", "members/{membership}/", None, A, 204),
    ("api keys list", "get", "api_keys/", None, A, 200),
    ("api key detail", "get", "api_keys/{key}/", None, A, 200),
    ("api key create", "post", "api_keys/", {"name": "ci", "role": "viewer"}, A, 201),
    ("api key revoke", "delete", "api_keys/{key}/", None, A, 204),
    ("automations list", "get", "automations/", None, V, 200),
    ("automation detail", "get", "automations/{automation}/", None, V, 200),
    ("automation create", "post", "automations/",
     {"name": "new-automation", "actions": [{"type": "mark-crashed"}],
      "trigger": {"type": "event", "posture": "reactive", "match": {"name": ["flow-run.state.failed"]}}}, A, 201),
    ("automation edit", "patch", "automations/{automation}/", {"description": "d"}, A, 200),
    ("automation enable", "post", "automations/{automation}/enable/", None, O, 200),
    ("automation disable", "post", "automations/{automation}/disable/", None, O, 200),
    ("automation firings", "get", "automations/{automation}/firings/", None, V, 200),
    ("automation delete", "delete", "automations/{automation}/", None, A, 204),
    ("webhooks list", "get", "webhooks/", None, A, 200),
    ("webhook detail", "get", "webhooks/{webhook}/", None, A, 200),
    ("webhook create", "post", "webhooks/", {"name": "new-hook"}, A, 201),
    ("webhook replace", "put", "webhooks/{webhook}/", {"name": "renamed-hook"}, A, 200),
    ("webhook edit", "patch", "webhooks/{webhook}/", {"enabled": False}, A, 200),
    ("webhook rotate", "post", "webhooks/{webhook}/rotate/", None, A, 200),
    ("webhook delete", "delete", "webhooks/{webhook}/", None, A, 204),
    # The agents' own API: agent keys only; a run's reports: its token only.
    ("agent register", "post", "agent/register", {"name": "new-agent", "queues": ["default"]}, AG, 201),
    ("agent heartbeat", "post", "agent/heartbeat", {"agent_id": "{agent}"}, AG, 200),
    ("agent claim", "post", "agent/claim", {"agent_id": "{agent}", "max_runs": 5}, AG, 200),
    ("agent ping", "get", "agent/ping", None, AG, 200),
    ("agent logs", "post", "agent/logs", {"logs": [{"flow_run_id": "{run}", "message": "hello"}]}, R, 201),
    ("agent flow run state", "post", "agent/flow_runs/{run}/state", {"state": "COMPLETED"}, R, 200),
    ("agent flow run heartbeat", "post", "agent/flow_runs/{run}/heartbeat", None, R, 200),
    ("agent task run create", "post", "agent/flow_runs/{run}/task_runs", {"task_key": "extract"}, R, 201),
    ("agent task run state", "post", "agent/task_runs/{task_run}/state", {"state": "COMPLETED"}, R, 200),
    ("agent task run heartbeat", "post", "agent/task_runs/{task_run}/heartbeat", None, R, 204),
]

CALLERS = ["viewer", "operator", "admin", "agent", "no key", "revoked key", R]
RANK = {V: 1, O: 2, A: 3}


def expected_status(caller, needed, success, own):
    if caller in ("no key", "revoked key"):
        return 401
    if (caller == R) != (needed == R):  # a key reports for no run; a run's token does nothing else
        return 403
    if not own:
        return 404
    if needed == R:
        return success
    if needed == AG or caller == AG:
        return success if caller == needed else 403
    return success if RANK[Role(caller)] >= RANK[needed] else 403


def run_token(run_id):
    """The report token of the run's current attempt, as its claimant holds it."""
    return token_of(FlowRun.objects.get(pk=run_id))


def authenticate_as_able(api, ws, endpoint, names):
    """Credentials that may call `endpoint` in `ws`: the token of the world's run for a run's
    report, an agent key for the agents' other endpoints, else an admin's key."""
    if endpoint[4] == R:
        return api.as_key(run_token(names["run"]))
    factories.member(ws, role=Role.ADMIN)
    return api.as_key(allowed_key(ws, endpoint[4]))


def world(ws):
    """One of each object in `ws`, named for the path templates."""
    flow = factories.flow(ws)
    queue = factories.work_queue(ws)
    run = factories.flow_run(flow, state="RUNNING", work_queue=queue)
    finished = factories.flow_run(flow, state="FAILED")
    agent = factories.agent(ws)
    agent.queues.add(queue)
    membership = Membership.objects.get(user=factories.member(ws, role=Role.VIEWER), workspace=ws)
    log = Log.objects.create(workspace=ws, flow_run=run, message="Rescheduled", source="lazarus", level=30)
    return {
        "flow": flow.pk, "flow_name": flow.name, "schedule": factories.schedule(flow).pk, "run": run.pk,
        "version": flow.latest_version.pk,
        "finished_run": finished.pk, "task_run": factories.task_run(run).pk, "queue": queue.pk, "agent": agent.pk,
        "membership": membership.pk, "key": factories.api_key(ws, role=Role.VIEWER)[0].pk,
        "outsider": factories.user().username, "log": log.pk, "secret": factories.secret(ws).name,
        "automation": Automation.objects.get(workspace=ws, default_key="crash-silent-runs").pk,
        "webhook": IncomingWebhook.objects.create(workspace=ws, name=f"hook-{factories.n()}").pk,
        "audit": AuditEntry.objects.create(workspace=ws, actor="ada", via="api", action="schedule.pause",
                                           target_type="schedule").pk,
        "deletion_job": DeletionJob.objects.create(workspace=ws, workspace_name=str(ws), target_type="flow",
                                                   target_id="1", target_name="gone", requested_by="ada",
                                                   via="api").pk,
        "delivery": Delivery.objects.create(workspace=ws, kind="webhook", target="https://example.com/hook",
                                            status="failed", attempts=8).pk,
    }


def allowed_key(ws, needed):
    """The secret of a key of `ws` that may call an endpoint needing `needed`: an agent key for the
    agents' endpoints, else an admin key."""
    return factories.api_key(ws, role=AG if needed == AG else A)[1]


def fill(template, names):
    if isinstance(template, dict):
        return {k: fill(v, names) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(item, names) for item in template]
    return template.format(**names) if isinstance(template, str) else template


def shape(path):
    """A path with its parameters blanked and its query dropped: how table rows meet schema paths."""
    return re.sub(r"\{[^}]*\}", "{}", path.split("?")[0])


def test_the_table_names_every_operation_of_the_schema(db):
    schema = SchemaGenerator().get_schema(request=None, public=True)
    documented = {(method, shape(path[len(WORKSPACE_PREFIX):])) for path, operations in schema["paths"].items()
                  if path.startswith(WORKSPACE_PREFIX) for method in operations}
    tabled = {(method, shape(path)) for _, method, path, *_ in ENDPOINTS}
    assert documented - tabled == set(), "operations without a row in ENDPOINTS"
    assert tabled - documented == set(), "rows for operations the schema does not have"


@pytest.mark.parametrize("own", [True, False], ids=["own", "foreign"])
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_status_by_role_and_workspace(api, ws, other_ws, endpoint, caller, own):
    name, method, path, body, needed, success = endpoint
    target = ws if own else other_ws
    names = world(target)
    factories.member(target, role=Role.ADMIN)  # so removing a member never hits "last admin"
    if caller == "revoked key":
        key, secret = factories.api_key(ws, role=Role.ADMIN)
        key.revoked_at = timezone.now()
        key.save()
        api.as_key(secret)
    elif caller == R:  # the token of a run of the caller's workspace (world's run when that is `ws`)
        api.as_key(run_token(names["run"] if own else world(ws)["run"]))
    elif caller != "no key":
        api.as_key(factories.api_key(ws, role=Role(caller))[1])
    response = getattr(api, method)(f"{api_prefix(target)}/{fill(path, names)}", fill(body, names), format="json")
    assert response.status_code == expected_status(caller, needed, success, own), response.content
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "message", "fields"}


def references(endpoint):
    """The objects a row names in its path or body (a username is not an object of a workspace)."""
    _, _, path, body, *_ = endpoint
    return set(re.findall(r"\{(\w+)\}", f"{path} {body}")) - {"outsider"}


FOREIGN_REFERENCES = [endpoint for endpoint in ENDPOINTS if references(endpoint)]


@pytest.mark.parametrize("endpoint", FOREIGN_REFERENCES, ids=[e[0] for e in FOREIGN_REFERENCES])
def test_another_workspaces_objects_are_not_reachable_through_your_own(api, ws, other_ws, endpoint):
    """A caller of `ws` allowed the endpoint (admin; agent key for the agents' endpoints; for a run's
    report, the token of a run of `ws`) naming `other_ws`'s objects under `ws`'s URL: 404 for a
    path, 400/404 for a body or a query parameter."""
    name, method, path, body, *_ = endpoint
    own = world(ws)  # own objects exist too, so "nothing here" cannot hide a leak
    foreign = world(other_ws)
    authenticate_as_able(api, ws, endpoint, own)
    response = getattr(api, method)(f"{api_prefix(ws)}/{fill(path, foreign)}", fill(body, foreign), format="json")
    # An id in the query string is a parameter like a body's field: a 400 naming it, or a 404.
    in_path = set(re.findall(r"\{(\w+)\}", path.split("?")[0]))
    assert response.status_code == 404 if in_path else response.status_code in (400, 404), response.content
    assert set(response.json()["error"]) == {"code", "message", "fields"}
