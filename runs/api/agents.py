"""The endpoints agents call: register, heartbeat, claim, report states, task runs and logs.

All live under `<workspace prefix>/agent/`. Register, heartbeat and claim need an API key with the
agent role (runs/access.py). Reports about one run (its state, heartbeat, task runs and logs) need that run's
report token from the claim (runs/run_tokens.py): only its claimant reports for a run, and a
report of an attempt that was superseded (the run was rescheduled or claimed again since) is a
409 with code `superseded`, which tells the runner to stop. State changes go through
`runs.states` (actor "agent"), so an illegal or stale change is a 409 naming both states.

Heartbeats are the hottest path of the server, so each is one write, committed on PostgreSQL
without waiting for the WAL flush:
- a flow run's: one UPDATE … RETURNING its state, which is the answer (CANCELLING tells the
  runner to stop), and the ids its `flow-run.heartbeat` event names; an SQLite without RETURNING
  reads them after the UPDATE;
- a task run's: one UPDATE of the row, if it is in the workspace (no event);
- an agent's: one UPDATE of the row, if it is in the workspace and its status is unchanged, then
  one read of its runs that are CANCELLING (the answer). A status that moves (back ONLINE, or the
  agent stopping) costs a second, conditional UPDATE and emits agent.online / agent.offline once.
"""

import json
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.shortcuts import get_object_or_404
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import APIView

from events.emit import emit, make, resource
from runs.claiming import cancelling_run_ids, claim_for_agent, poll_state, record_poll
from runs.logs import ingest
from runs.models import (
    Actor, Agent, AgentStatus, FlowRun, Log, LogLevel, Role, State, TaskRun, secret_values)
from runs import actions, hot_sql, quota
from runs.beats_behind import applies, beats_behind
from runs.audit import Who
from runs.models import TERMINAL_STATES
from runs.run_tokens import token_of
from runs.states import IllegalTransition, StaleTransition, set_flow_run_state, set_task_run_state
from runs.vault import redact, redaction_forms

from .agent_payloads import (
    AgentHeartbeatAnswerSerializer,
    AgentHeartbeatInput,
    AgentPingSerializer,
    ClaimAnswerSerializer,
    ClaimInput,
    FlowRunHeartbeatAnswerSerializer,
    LogBatchEnvelope,
    LogBatchInput,
    RegisteredAgentSerializer,
    RegisterInput,
    ReportedFlowRunSerializer,
    ReportedTaskRunSerializer,
    StateInput,
    StoredLogsSerializer,
    TaskRunInput,
    TaskRunStateInput,
    log_batch_max_lines,
    plain_claim,
    valid_log_line,
)
from .errors import error_body
from .schema import CONFLICT, error_response

NO_CONTENT = OpenApiResponse(description="Recorded.")
TOO_LARGE = error_response("The batch is larger than ORCHESTRATOR_AGENT_LOG_BATCH_MAX_BYTES; send smaller ones.",
                           "Too large", error_body("payload_too_large",
                                                      "A log batch may be at most 1048576 bytes; send smaller batches."))


def record_heartbeat(queryset, **values):
    """One UPDATE of the beating rows; returns how many matched.

    On PostgreSQL it commits without waiting for the WAL flush: a heartbeat lost in a database
    crash is replaced by the next one, and the flush is most of a heartbeat's cost.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        return queryset.update(**values)


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


class Superseded(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "superseded"


def superseded(run_id):
    return Superseded(f"This report token is of an earlier attempt of flow run {run_id}: the run was rescheduled "
                      "or claimed again since. Stop the flow without reporting.")


class AgentEndpoint(APIView):
    """Base of every agent endpoint: the agent role, no throttling (agents pace themselves)."""

    required_role = Role.AGENT
    throttle_classes = []
    run_scoped = False  # True: a report about one run, made with the run's report token

    def valid(self, serializer_class):
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class RunReportEndpoint(AgentEndpoint):
    """A report about one flow run: authenticated by the run's report token (request.auth, a RunGrant)."""

    run_scoped = True

    def granted(self, run):
        """The token's grant for `run` (a row of this workspace); a token of another run is a 403, one
        of an earlier attempt of this run a 409 `superseded`."""
        grant = self.request.auth
        if grant.run_id != run.pk:
            raise exceptions.PermissionDenied(f"This report token is for flow run {grant.run_id}, not {run.pk}.")
        if run.token_generation != grant.generation:
            raise superseded(run.pk)
        return grant

    def fenced_run(self, run_id, queryset=None):
        """The flow run, alive, of this workspace and of the token's attempt; else 404 / 403 / 409."""
        queryset = queryset if queryset is not None else FlowRun.objects.alive().select_related("flow_version")
        run = get_object_or_404(queryset, pk=run_id, workspace=self.request.workspace)
        self.granted(run)
        return run


def secret_forms(workspace_id, names):
    """What reports of a run that gets the secrets `names` must not carry: every form of their values."""
    return redaction_forms(secret_values(workspace_id, names).values()) if names else []


def secrets_in(run):
    """secret_forms of the secrets `run` gets (its version names them)."""
    return secret_forms(run.workspace_id, run.flow_version.secrets if run.flow_version else [])


class RegisterView(AgentEndpoint):
    @extend_schema(request=RegisterInput, responses={201: RegisteredAgentSerializer})
    def post(self, request, **kwargs):
        """Create or refresh the agent named `name`; its queues are created when missing."""
        data = self.valid(RegisterInput)
        now = timezone.now()
        workspace = request.workspace
        queues = actions.ensure_queues(workspace, list(dict.fromkeys(data["queues"])), who=Who.of(request, "api"))
        with transaction.atomic():
            # Locked while read, so of two registrations of an OFFLINE agent only one sees it offline.
            was = Agent.objects.select_for_update().filter(workspace=workspace, name=data["name"]) \
                .values_list("status", flat=True).first()
            agent, created = Agent.objects.update_or_create(
                workspace=workspace, name=data["name"],
                defaults={"labels": data["labels"], "version": data["version"],
                          "heartbeat_interval": data["heartbeat_interval"], "last_heartbeat": now,
                          "status": AgentStatus.ONLINE},
            )
            agent.queues.set(queues)
            if created or was == AgentStatus.OFFLINE:
                emit([agent_status_event(agent.workspace_id, agent.pk, agent.name, AgentStatus.ONLINE, now,
                                         "registered" if created else "registered again")])
        return Response({"id": agent.pk, "name": agent.name, "queues": sorted(q.name for q in queues),
                         "task_result_max_bytes": settings.ORCHESTRATOR["TASK_RESULT_MAX_BYTES"],
                         "log_batch_max_lines": log_batch_max_lines(),
                         "claim_max_runs": settings.ORCHESTRATOR["AGENT_CLAIM_MAX_RUNS"],
                         "handback_delay_seconds": settings.ORCHESTRATOR["HANDBACK_DELAY_SECONDS"]},
                        status=status.HTTP_201_CREATED)


class AgentHeartbeatView(AgentEndpoint):
    @extend_schema(request=AgentHeartbeatInput, responses={200: AgentHeartbeatAnswerSerializer})
    def post(self, request, **kwargs):
        """The agent is alive (or, with status OFFLINE, is shutting down); the answer lists its runs to stop."""
        data = self.valid(AgentHeartbeatInput)
        if not record_agent_heartbeat(request.workspace.pk, data["agent_id"], data["status"], timezone.now()):
            raise exceptions.NotFound("No such agent in this workspace.")
        return Response({"cancelling": [str(pk) for pk in cancelling_run_ids(data["agent_id"])]})


def agent_status_event(workspace_id, agent_id, name, status, now, reason):
    """agent.online / agent.offline for an agent whose status just moved (by a conditional update)."""
    return make(workspace_id, "agent.online" if status == AgentStatus.ONLINE else "agent.offline",
                resource("agent", agent_id, name), payload={"reason": reason}, occurred=now)


def record_agent_heartbeat(workspace_id, agent_id, status, now):
    """Record an agent's heartbeat with the status it reports; False when no such agent in the workspace.

    The usual beat (the status unchanged) is one UPDATE, as before events. Only when it matches
    nothing is the status moved, by a second UPDATE conditional on the old status: of two beats at
    once exactly one moves it, and that one emits agent.online (back from OFFLINE) or agent.offline
    (the agent says it is stopping).
    """
    agents = Agent.objects.filter(pk=agent_id, workspace_id=workspace_id)
    if record_heartbeat(agents.filter(status=status), last_heartbeat=now, status=status):
        return True
    if record_heartbeat(agents.exclude(status=status), last_heartbeat=now, status=status):
        name = agents.values_list("name", flat=True).first()
        emit([agent_status_event(workspace_id, agent_id, name, status, now,
                                 "heartbeat" if status == AgentStatus.ONLINE else "the agent is stopping")])
        return True
    # Another beat moved it meanwhile; this one still counts, if the agent exists.
    return bool(record_heartbeat(agents, last_heartbeat=now, status=status))


def mark_online_on_poll(agent, now):
    """An OFFLINE agent that polls is back: ONLINE with a fresh heartbeat (or the agent monitor would
    take it offline again at once), agent.online emitted by whichever request moved it. Costs nothing
    for an ONLINE agent, which is the agent row the claim already read."""
    if agent.status != AgentStatus.OFFLINE:
        return
    if Agent.objects.filter(pk=agent.pk, status=AgentStatus.OFFLINE).update(status=AgentStatus.ONLINE,
                                                                            last_heartbeat=now):
        emit([agent_status_event(agent.workspace_id, agent.pk, agent.name, AgentStatus.ONLINE, now, "poll")])
    agent.status = AgentStatus.ONLINE


def _claimed_runs(runs, secrets):
    """The claimed runs (ClaimedRun rows of runs/claiming.py) as the agent gets them. `secrets`:
    {name: value} of the workspace's secrets the runs of this claim need; each run gets those its
    version names, and the names of any missing.

    What a run takes from its queue and version (its environment, its secrets) is made once per
    queue and version, not once per run: a claim of 200 runs usually has one of each."""
    envs, granted = {}, {}
    answers = []
    for run in runs:
        has_version = run.flow_version_id is not None
        env_key = (run.work_queue_id, run.flow_version_id)
        if env_key not in envs:
            env = {**(run.queue_job_env if run.work_queue_id is not None else {}),
                   **(run.version_job_env if has_version else {})}
            envs[env_key] = {str(k): str(v) for k, v in env.items()}
        if run.flow_version_id not in granted:
            needed = run.version_secrets if has_version else []
            granted[run.flow_version_id] = ({name: secrets[name] for name in needed if name in secrets},
                                            [name for name in needed if name not in secrets])
        run_secrets, missing = granted[run.flow_version_id]
        answers.append({
            "id": str(run.pk), "name": run.name, "flow": run.flow_name, "state": run.state,
            "entrypoint": run.entrypoint if has_version else None,
            "parameters": {**(run.version_parameters if has_version else {}), **run.parameters},
            "env": envs[env_key],
            "work_queue": run.queue_name if run.work_queue_id is not None else None,
            "scheduled_start": run.scheduled_start.isoformat(),
            "token": token_of(run),
            "secrets": run_secrets,
            "missing_secrets": missing,
        })
    return answers


def quiet_poll(workspace, state, now):
    """The answer to a poll that finds nothing due and no run to hand out again, as ClaimView's claim
    would answer it: no runs, the agent's CANCELLING runs, the quota's refusal if any; the poll
    recorded on its stale queues. `state`: the poll's PollState (runs/claiming.py poll_state). None
    when the poll has more to do, or may have (`due` not read: SQLite), or the agent is OFFLINE and
    back now: then the claim does it. Most polls of a healthy server find nothing; the claim's locks
    wait for work.
    """
    if state.due is not False or state.agent.status == AgentStatus.OFFLINE \
            or any(run_state == State.SUBMITTED for _, run_state in state.mine):
        return None
    record_poll([pk for pk, _, _, stale in state.queues if stale], now, state.agent)
    return {"runs": [], "cancelling": [pk for pk, run_state in state.mine if run_state == State.CANCELLING],
            "quota": quota.claim_refusal(workspace, now)}


class ClaimView(AgentEndpoint):
    @extend_schema(request=ClaimInput, responses={200: ClaimAnswerSerializer})
    def post(self, request, **kwargs):
        """Claim up to `max_runs` due runs of the agent's queues; they come back SUBMITTED.

        Runs this agent claimed before and has not started come again (the answer that carried them
        may have been lost); the answer also lists the agent's runs that are CANCELLING. When the
        workspace has used its monthly task-run quota, `quota` says so (limit, used, reset time, who
        may raise it) and no new run is claimed: due runs wait, SCHEDULED or LATE.
        """
        data = plain_claim(request.data) or self.valid(ClaimInput)
        now = timezone.now()
        state = poll_state(request.workspace.pk, data["agent_id"], now)
        if state is None:
            raise exceptions.NotFound("No Agent matches the given query.")
        quiet = quiet_poll(request.workspace, state, now)
        if quiet is not None:
            return Response(quiet)
        agent = state.agent
        mark_online_on_poll(agent, now)
        refusal = quota.claim_refusal(request.workspace, now)
        runs, cancelling = claim_for_agent(agent, limit=data["max_runs"], now=now, new_runs=refusal is None,
                                           state=state)
        secrets = secret_values(request.workspace.pk, {name for run in runs if run.flow_version_id is not None
                                                       for name in run.version_secrets})
        return Response({"runs": _claimed_runs(runs, secrets),
                         "cancelling": [str(pk) for pk in cancelling], "quota": refusal})


class FlowRunStateView(RunReportEndpoint):
    @extend_schema(request=StateInput, responses={200: ReportedFlowRunSerializer, 409: CONFLICT})
    def post(self, request, run_id, **kwargs):
        """Move the run; entering RUNNING records its heartbeat interval (null: heartbeats off)."""
        data = self.valid(StateInput)
        run = self.fenced_run(run_id)
        now = timezone.now()
        updates = {}
        if data["state"] == State.RUNNING:
            updates = {"heartbeat_interval": data.get("heartbeat_interval"), "last_heartbeat": now}
        elif data["state"] == State.SCHEDULED:
            # Handed back (e.g. by a runner that lost its agent with heartbeats off): for any agent, and
            # the next attempt starts afresh, so that task runs of this one count as earlier. Due only
            # after the hand-back delay: the runner may still be stopping the flow, within half of it.
            delay = timedelta(seconds=settings.ORCHESTRATOR["HANDBACK_DELAY_SECONDS"])
            updates = {"scheduled_start": now + delay, "agent": None, "start_time": None, "last_heartbeat": None}
        message = redact(data["message"], secrets_in(run))
        try:
            # Fenced in the UPDATE itself: an attempt superseded since the check above changes nothing.
            run = set_flow_run_state(run, data["state"], actor=Actor.AGENT, message=message,
                                     expected_state=data.get("expected_state"), agent=run.agent, now=now,
                                     updates=updates, fence={"token_generation": request.auth.generation})
        except StaleTransition:
            self.fenced_run(run_id, FlowRun.objects.all())  # superseded meanwhile: say so
            raise
        return Response({"id": str(run.pk), "state": run.state, "state_message": run.state_message})


def record_flow_run_heartbeat(run_id, workspace_id, now, generation):
    """Move the run's last heartbeat to `now` if `generation` is its current attempt; returns its
    state, or None if no such run of that attempt in the workspace. Emits flow-run.heartbeat.

    The heartbeat is the server's hottest path, and its answer tells a runner to stop (CANCELLING),
    so the state (and the ids its event names) come back from the UPDATE itself
    (runs/hot_sql.py beat_flow_run: one round trip on PostgreSQL), or, for a run this process has
    read lately, from its view, the beat written behind (runs/beats_behind.py).
    """
    behind = applies()
    row = beats_behind.answer(run_id, workspace_id, now, generation) if behind else None
    if row is None:
        mark = beats_behind.mark() if behind else None
        row = hot_sql.beat_flow_run(run_id, workspace_id, now, generation)
        if row is None:
            return None
        if behind:
            beats_behind.learn(run_id, workspace_id, generation, row, mark)
    state, flow_id, queue_id, agent_id = row
    # One event per beat of the flow run (task runs' beats are not events: too many, and the flow
    # run's own beat already says its process lives).
    emit([make(workspace_id, "flow-run.heartbeat", resource("flow-run", run_id),
               related=[resource(kind, id_) for kind, id_ in
                        (("flow", flow_id), ("work-queue", queue_id), ("agent", agent_id)) if id_ is not None],
               payload={"state": state}, occurred=now)])
    return state


class FlowRunHeartbeatView(RunReportEndpoint):
    @extend_schema(request=None, responses={200: FlowRunHeartbeatAnswerSerializer, 409: CONFLICT})
    def post(self, request, run_id, **kwargs):
        """The run's process is alive; the answer is the run's state (CANCELLING: stop; a 409
        `superseded`: another attempt has the run, stop without reporting)."""
        grant = request.auth
        if grant.run_id == run_id:
            state = record_flow_run_heartbeat(run_id, request.workspace.pk, timezone.now(), grant.generation)
            if state is not None:
                return Response({"state": state})
        self.fenced_run(run_id, FlowRun.objects.all())  # why not: 404, another run's token, or superseded
        raise exceptions.NotFound("No such flow run in this workspace.")


def _task_run_body(task_run):
    return {"id": str(task_run.pk), "task_key": task_run.task_key, "dynamic_key": task_run.dynamic_key,
            "state": task_run.state, "run_count": task_run.run_count, "result": task_run.result}


class TaskRunCreateView(RunReportEndpoint):
    @extend_schema(request=TaskRunInput,
                   responses={201: ReportedTaskRunSerializer, 200: ReportedTaskRunSerializer, 409: CONFLICT})
    def post(self, request, run_id, **kwargs):
        """Create the task run (task_key, dynamic_key) of the flow run, or return it if it exists.

        Idempotent, so an agent that retries after a lost answer gets the same task run. A task run
        that COMPLETED with a kept result comes back as it is (its result stands, like Prefect's
        task caching by key); one that an earlier attempt left otherwise is reopened (SCHEDULED).
        """
        data = self.valid(TaskRunInput)
        run = self.fenced_run(run_id)
        if run.state in TERMINAL_STATES:
            raise IllegalTransition(f"Flow run {run.pk} is {run.state}: it starts no more task runs.",
                                    current=run.state, requested=State.RUNNING)
        task_run, created = TaskRun.objects.get_or_create(
            flow_run=run, task_key=data["task_key"], dynamic_key=data["dynamic_key"],
            defaults={"name": data["name"] or data["task_key"], "max_retries": data["max_retries"]},
        )
        result_stands = task_run.state == State.COMPLETED and task_run.result is not None
        if not created and not result_stands and _left_by_an_earlier_attempt(task_run, run):
            why = (" without a result the server kept (not JSON, or larger than ORCHESTRATOR_TASK_RESULT_MAX_BYTES)"
                   if task_run.state == State.COMPLETED else "")
            message = (f"Run again: attempt {run.run_count} of the flow run started after this task ended "
                       f"{task_run.state} in an earlier attempt{why}.")
            task_run = set_task_run_state(task_run, State.SCHEDULED, actor=Actor.AGENT, agent=run.agent, retry=True,
                                          message=message)
            if why:
                Log.objects.create(workspace=request.workspace, flow_run=run, task_run=task_run,
                                   level=LogLevel.WARNING, message=message, source="agent")
        return Response(_task_run_body(task_run), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def _left_by_an_earlier_attempt(task_run, run):
    """True when `task_run` belongs to an earlier attempt of `run` (e.g. before Lazarus rescheduled it).

    Lazarus clears a run's start time and the next RUNNING sets it anew, so a task run that
    started before the flow run's current start is a leftover. Its key is the same, so without
    this the new attempt could never run that task again (FAILED -> RUNNING is refused).
    """
    if task_run.state == State.SCHEDULED or task_run.start_time is None or run.start_time is None:
        return False
    return task_run.start_time < run.start_time


class TaskRunReportEndpoint(RunReportEndpoint):
    def fenced_task_run(self, task_run_id):
        """The task run, of this workspace, of the token's run and attempt; else 404 / 403 / 409."""
        task_run = get_object_or_404(TaskRun.objects.select_related("flow_run__flow_version"), pk=task_run_id,
                                     flow_run__workspace=self.request.workspace)
        self.granted(task_run.flow_run)
        return task_run


def kept_result(value, secrets=()):
    """{"value": value} when it fits ORCHESTRATOR_TASK_RESULT_MAX_BYTES (compact UTF-8 JSON) and holds
    none of the run's secrets in any of their forms (`secrets`), else None (the task would run again)."""
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if any(secret and secret in encoded for secret in secrets):
        return None
    return {"value": value} if len(encoded.encode()) <= settings.ORCHESTRATOR["TASK_RESULT_MAX_BYTES"] else None


class TaskRunStateView(TaskRunReportEndpoint):
    @extend_schema(request=TaskRunStateInput, responses={200: ReportedTaskRunSerializer, 409: CONFLICT})
    def post(self, request, task_run_id, **kwargs):
        """Move the task run; entering RUNNING counts as its first heartbeat; COMPLETED may bring its result."""
        data = self.valid(TaskRunStateInput)
        task_run = self.fenced_task_run(task_run_id)
        now = timezone.now()
        updates = {"last_heartbeat": now} if data["state"] == State.RUNNING else {}
        secrets = secrets_in(task_run.flow_run)
        if data["state"] == State.COMPLETED and "result" in data:
            updates["result"] = kept_result(data["result"], secrets)
        message = redact(data["message"], secrets)
        try:
            task_run = set_task_run_state(task_run, data["state"], actor=Actor.AGENT, message=message,
                                          expected_state=data.get("expected_state"), agent=task_run.flow_run.agent,
                                          now=now, updates=updates,
                                          fence={"flow_run__token_generation": request.auth.generation})
        except StaleTransition:
            self.fenced_task_run(task_run_id)  # superseded meanwhile: say so
            raise
        return Response(_task_run_body(task_run))


class TaskRunHeartbeatView(TaskRunReportEndpoint):
    @extend_schema(request=None, responses={204: NO_CONTENT, 409: CONFLICT})
    def post(self, request, task_run_id, **kwargs):
        """The task run is still working."""
        grant = request.auth
        changed = record_heartbeat(TaskRun.objects.filter(pk=task_run_id, flow_run_id=grant.run_id,
                                                          flow_run__token_generation=grant.generation,
                                                          flow_run__workspace=request.workspace),
                                   last_heartbeat=timezone.now())
        if not changed:
            self.fenced_task_run(task_run_id)  # why not: 404, another run's token, or superseded
            raise exceptions.NotFound("No such task run in this workspace.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class LogBatchView(RunReportEndpoint):
    @extend_schema(request=LogBatchInput, responses={201: StoredLogsSerializer, 409: CONFLICT, 413: TOO_LARGE})
    def post(self, request, **kwargs):
        """Accept many log lines of the token's run; each line is judged on its own.

        Accepted lines go to the log ingestion path (runs/logs/ingest.py): with Redis they are
        stored by the log persister within about a second, at least once and never twice; without
        it, in this request. `stored` counts the accepted lines.

        A batch is bounded in bytes (413) and in lines (400 on `logs`), both judged before any line.
        Good lines are stored and the others listed in `refused` with the reason, so one bad line
        never costs its batch. When no line can be stored: 400 if some were malformed, else 404
        (they name runs not in this workspace, or not the token's run). A superseded attempt's
        lines are refused as a whole (409): they would mix with the new attempt's.
        """
        limit = settings.ORCHESTRATOR["AGENT_LOG_BATCH_MAX_BYTES"]
        # Judged on the declared length, before the body is read or parsed.
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            raise PayloadTooLarge(f"A log batch may be at most {limit} bytes; send smaller batches.")
        refused, lines = [], []
        max_chars = settings.ORCHESTRATOR["AGENT_LOG_LINE_MAX_CHARS"]
        for index, raw in enumerate(self.valid(LogBatchEnvelope)["logs"]):
            data, problems = valid_log_line(raw, max_chars)
            if data is not None:
                lines.append((index, data))
                continue
            refused.append({"index": index, "reason": "; ".join(f"{field}: {errors[0]}"
                                                               for field, errors in problems.items())})
        malformed = [f"line {r['index']}: {r['reason']}" for r in refused]
        grant = request.auth
        task_ids = {line["task_run_id"] for _, line in lines if line.get("task_run_id")}
        run = FlowRun.objects.filter(pk=grant.run_id, workspace=request.workspace) \
            .values_list("token_generation", "flow_version__secrets").first() if lines else None
        if run is not None and run[0] != grant.generation:
            raise superseded(grant.run_id)
        found = {grant.run_id} if run is not None else set()
        secrets = secret_forms(request.workspace.pk, run[1] if run else [])
        tasks = dict(TaskRun.objects.filter(pk__in=task_ids, flow_run__workspace=request.workspace)
                     .values_list("pk", "flow_run_id")) if task_ids else {}
        now = timezone.now()
        accepted = []
        for index, line in lines:
            task_run_id = line.get("task_run_id")
            if line["flow_run_id"] != grant.run_id:
                refused.append({"index": index, "reason": f"flow_run_id: this token reports for flow run "
                                                          f"{grant.run_id} only."})
            elif line["flow_run_id"] not in found:
                refused.append({"index": index, "reason": "flow_run_id: no such flow run in this workspace."})
            elif task_run_id and tasks.get(task_run_id) != line["flow_run_id"]:
                refused.append({"index": index, "reason": "task_run_id: no such task run in this flow run."})
            else:
                accepted.append(line)
        if not accepted:
            if malformed:
                raise exceptions.ValidationError({"logs": malformed})
            raise exceptions.NotFound("No line of the batch names the token's flow run (and a task run of it) "
                                      "in this workspace.")
        # Their own path (runs/logs/ingest.py): with Redis, one XADD and no database write here.
        if secrets:
            for line in accepted:
                line["message"] = redact(line["message"], secrets)
        ingest.accept(ingest.batch_rows(request.workspace.pk, grant.run_id, accepted, now))
        return Response({"stored": len(accepted), "refused": sorted(refused, key=lambda r: r["index"])},
                        status=status.HTTP_201_CREATED)


class PingView(AgentEndpoint):
    @extend_schema(responses={200: AgentPingSerializer})
    def get(self, request, **kwargs):
        """Does nothing but authenticate: the baseline the benchmarks compare agent endpoints with."""
        return Response({"ok": True})


# Included under `<workspace prefix>/agent/` by runs/api/urls.py.
urlpatterns = [
    path("register", RegisterView.as_view(), name="agent-register"),
    path("heartbeat", AgentHeartbeatView.as_view(), name="agent-heartbeat"),
    path("claim", ClaimView.as_view(), name="agent-claim"),
    path("ping", PingView.as_view(), name="agent-ping"),
    path("logs", LogBatchView.as_view(), name="agent-logs"),
    path("flow_runs/<uuid:run_id>/state", FlowRunStateView.as_view(), name="agent-flow-run-state"),
    path("flow_runs/<uuid:run_id>/heartbeat", FlowRunHeartbeatView.as_view(), name="agent-flow-run-heartbeat"),
    path("flow_runs/<uuid:run_id>/task_runs", TaskRunCreateView.as_view(), name="agent-task-runs"),
    path("task_runs/<uuid:task_run_id>/state", TaskRunStateView.as_view(), name="agent-task-run-state"),
    path("task_runs/<uuid:task_run_id>/heartbeat", TaskRunHeartbeatView.as_view(),
         name="agent-task-run-heartbeat"),
]
