"""Actions: what an automation does when it fires. Owned by the actions work (wip/actions).

Contract used by others:
- `validate_actions(data, workspace) -> list`: the cleaned actions, or raises django ValidationError
  whose message_dict names the field (e.g. {"actions[0].url": ["…"]}).
- `destinations_missing(actions) -> list[str]`: the fields of (cleaned) actions that still need a
  destination (an e-mail's empty `to`, a webhook's or Slack message's empty `url`), e.g.
  ["actions[1].to"]. Such actions are valid while the automation is disabled; the API and the
  admin refuse to enable it while this list is not empty.
- `run_actions(automation, firing, context, now) -> list`: runs the automation's actions inside
  the caller's transaction, each in its own savepoint (one failing action never stops the others),
  and returns one result per action: {"type", "ok", "detail"}. Outgoing messages are queued as
  Delivery rows, never sent here. `context`: {"events": [events.models.Event], "resource": dict or
  None (the resource the firing is about), "reason": str}.

The action types (README, Automations › Actions):
- {"type": "pause-schedule" | "resume-schedule", "schedule_id": id}
- {"type": "run-flow", "flow_id": id, "parameters": {…}}
- {"type": "cancel-run" | "mark-crashed", "flow_run_id": uuid}
- {"type": "pause-queue" | "resume-queue", "work_queue_id": id}
- {"type": "call-webhook", "url": "https://…", "secret_name": "NAME", "body": "template"}
- {"type": "send-email", "to": ["ops@example.com", "admins"], "body": "template"}
- {"type": "post-slack", "url": "https://hooks.slack.com/…", "body": "template"}
An omitted id means the firing's own: its resource when it is of that kind, else the flow run's
schedule or queue, else the resource of that kind the firing's events name as related.
"""

import logging
import uuid
from dataclasses import dataclass
from functools import cached_property

from django.db import transaction

from automations import messages
from automations.action_checks import ADMINS, destinations_missing, validate_actions  # noqa: F401 (the contract)
from automations.models import Delivery, DeliveryKind
from runs import actions as setup_actions
from runs.audit import Who
from runs.models import Actor, Flow, FlowRun, Membership, Role, Schedule, ScheduleStatus, State, WorkQueue
from runs.scheduling import create_manual_run
from runs.states import TransitionError, set_flow_run_state

logger = logging.getLogger(__name__)


# --- running -------------------------------------------------------------------------------------

class ActionFailed(Exception):
    """An action that could not do what it says; the message is the result's detail."""


def _as_dict(event):
    return event.as_dict() if hasattr(event, "as_dict") else dict(event)


@dataclass
class ActionRun:
    """What one run of the actions knows: the automation, its firing, why, and when."""

    automation: object
    firing: object
    context: dict
    now: object

    @property
    def workspace_id(self):
        return self.automation.workspace_id

    @cached_property
    def who(self):
        return Who(f"automation:{self.automation.name}"[:200], None, "automation")

    @property
    def message(self):
        return f'By automation "{self.automation.name}".'

    @cached_property
    def document(self):
        return messages.firing_document(self.automation, self.firing, self.context)

    @cached_property
    def events(self):
        return [_as_dict(event) for event in self.context.get("events") or []]

    def own(self, kind):
        """The id of the firing's resource of `kind` (see the module's docstring), or None."""
        resource = self.context.get("resource") or {}
        if resource.get("kind") == kind:
            return resource.get("id")
        if resource.get("kind") == "flow-run" and kind in ("schedule", "work-queue"):
            field = "schedule_id" if kind == "schedule" else "work_queue_id"
            found = FlowRun.objects.filter(pk=_uuid_or_none(resource.get("id")), workspace_id=self.workspace_id
                                           ).values_list(field, flat=True).first()
            if found:
                return found
        for event in reversed(self.events):
            about = event.get("resource") or {}
            if resource and (about.get("kind"), str(about.get("id"))) != (resource.get("kind"), str(resource.get("id"))):
                continue
            if about.get("kind") == kind:
                return about.get("id")
            for related in event.get("related") or []:
                if isinstance(related, dict) and related.get("kind") == kind:
                    return related.get("id")
        return None


def _uuid_or_none(value):
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _target(run, action, field, kind, queryset, what):
    """The row the action is about: its id, else the firing's own; in the automation's workspace."""
    wanted = given = action.get(field) or run.own(kind)
    if wanted in (None, ""):
        raise ActionFailed(f"no {what} to act on: name its id, or let the firing be about one")
    if queryset.model is FlowRun:
        wanted = _uuid_or_none(wanted)
    elif not (str(wanted).isascii() and str(wanted).isdigit() and 0 < int(str(wanted)) < 2 ** 63):
        wanted = None
    row = queryset.filter(pk=wanted).first() if wanted else None
    if row is None:
        raise ActionFailed(f"{what} {str(given)[:100]} no longer exists in this workspace")
    return row


def _schedule(run, action):
    return _target(run, action, "schedule_id", "schedule",
                   Schedule.objects.select_related("flow").filter(flow__workspace_id=run.workspace_id), "schedule")


def pause_schedule(run, action):
    schedule = _schedule(run, action)
    if schedule.status == ScheduleStatus.PAUSED:
        return f"schedule {schedule} was already paused"
    deleted = setup_actions.pause_schedule(schedule, who=run.who, now=run.now)
    return f"paused schedule {schedule} ({deleted} future runs deleted)"


def resume_schedule(run, action):
    schedule = _schedule(run, action)
    if schedule.status == ScheduleStatus.ACTIVE:
        return f"schedule {schedule} was already active"
    made = setup_actions.resume_schedule(schedule, who=run.who, now=run.now)
    return f"resumed schedule {schedule} ({made} runs scheduled)"


def run_flow(run, action):
    flow = Flow.objects.filter(pk=action.get("flow_id"), workspace_id=run.workspace_id).first()
    if flow is None:
        raise ActionFailed(f"flow {action.get('flow_id')} no longer exists in this workspace")
    # One run per firing and action, however often the firing's actions are run.
    key = f"automation-firing:{run.firing.pk}:{action['_index']}" if getattr(run.firing, "pk", None) else None
    flow_run, created = create_manual_run(
        flow, parameters=action.get("parameters") or {}, idempotency_key=key, name=f"{flow.name}-automation",
        actor=Actor.AUTOMATION, message=f'Created by automation "{run.automation.name}".')
    return f"{'created' if created else 'already created'} run {flow_run.name} ({flow_run.pk}) of flow {flow.name}"


def _flow_run(run, action):
    return _target(run, action, "flow_run_id", "flow-run",
                   FlowRun.objects.filter(workspace_id=run.workspace_id, deleted_at__isnull=True), "flow run")


def cancel_run(run, action):
    flow_run = _flow_run(run, action)
    if flow_run.state in (State.CANCELLING, State.CANCELLED):
        return f"run {flow_run} was already {flow_run.state}"
    # As the API's cancel: a run that has not started is cancelled at once; a started one is asked to stop.
    target = State.CANCELLED if flow_run.state in (State.SCHEDULED, State.LATE) else State.CANCELLING
    set_flow_run_state(flow_run, target, actor=Actor.AUTOMATION, message=run.message, now=run.now)
    return f"moved run {flow_run} to {target}"


def mark_crashed(run, action):
    flow_run = _flow_run(run, action)
    if flow_run.state == State.CRASHED:
        return f"run {flow_run} was already CRASHED"
    set_flow_run_state(flow_run, State.CRASHED, actor=Actor.AUTOMATION, message=run.message, now=run.now)
    return f"marked run {flow_run} CRASHED"


def _queue(run, action):
    return _target(run, action, "work_queue_id", "work-queue",
                   WorkQueue.objects.filter(workspace_id=run.workspace_id), "work queue")


def pause_queue(run, action):
    queue = _queue(run, action)
    if queue.paused:
        return f"work queue {queue} was already paused"
    setup_actions.set_queue(queue, who=run.who, action="work_queue.pause", paused=True)
    return f"paused work queue {queue}"


def resume_queue(run, action):
    queue = _queue(run, action)
    if not queue.paused:
        return f"work queue {queue} was not paused"
    setup_actions.set_queue(queue, who=run.who, action="work_queue.resume", paused=False)
    return f"resumed work queue {queue}"


def _deliver(run, kind, target, body, subject="", secret_name=""):
    Delivery.objects.create(
        workspace_id=run.workspace_id, firing=run.firing if getattr(run.firing, "pk", None) else None, kind=kind,
        target=target, subject=subject[:300], body=body, secret_name=secret_name, next_attempt=run.now,
        created=run.now)


def _text(run, action):
    if action.get("body"):
        return messages.render(action["body"], run.document)
    return messages.summary_text(run.document)


def call_webhook(run, action):
    if not action.get("url"):
        raise ActionFailed("no URL set for this webhook")
    if action.get("body"):
        body = messages.render(action["body"], run.document)
    else:
        body = messages.json_document(run.document)
    _deliver(run, DeliveryKind.WEBHOOK, action["url"], body, secret_name=action.get("secret_name") or "")
    return f"queued webhook to {messages.shown_url(action['url'])}"


def send_email(run, action):
    recipients = []
    for address in action.get("to") or []:
        if address == ADMINS:
            recipients += Membership.objects.filter(workspace_id=run.workspace_id, role=Role.ADMIN).exclude(
                user__email="").order_by("user__email").values_list("user__email", flat=True)
        else:
            recipients.append(address)
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        raise ActionFailed("no one to write to: no address given, or the workspace's admins have none")
    _deliver(run, DeliveryKind.EMAIL, ", ".join(recipients), _text(run, action),
             subject=f"[Orchestrator] {run.automation.name}")
    return f"queued e-mail to {', '.join(recipients)}"


def post_slack(run, action):
    if not action.get("url"):
        raise ActionFailed("no URL set for this Slack-compatible webhook")
    body = messages.to_json({"text": messages.cut(_text(run, action), 40_000)})
    _deliver(run, DeliveryKind.SLACK, action["url"], body)
    return f"queued Slack message to {messages.shown_url(action['url'], hide_path=True)}"


RUNNERS = {
    "pause-schedule": pause_schedule, "resume-schedule": resume_schedule, "run-flow": run_flow,
    "cancel-run": cancel_run, "mark-crashed": mark_crashed, "pause-queue": pause_queue, "resume-queue": resume_queue,
    "call-webhook": call_webhook, "send-email": send_email, "post-slack": post_slack,
}


def run_actions(automation, firing, context, now):
    """Run `automation`'s actions for `firing`, each in its own savepoint; one result per action."""
    run = ActionRun(automation, firing, context or {}, now)
    results = []
    for index, action in enumerate(automation.actions or []):
        kind = action.get("type") if isinstance(action, dict) else None
        runner = RUNNERS.get(kind)
        if runner is None:
            results.append({"type": str(kind), "ok": False, "detail": f"unknown action type {str(kind)[:40]!r}"})
            continue
        try:
            with transaction.atomic():
                detail = runner(run, {**action, "_index": index})
        except ActionFailed as exc:
            results.append({"type": kind, "ok": False, "detail": str(exc)})
        except TransitionError as exc:
            results.append({"type": kind, "ok": False, "detail": exc.message})
        except Exception as exc:  # noqa: BLE001 - one broken action must not stop the next
            logger.exception("Action %d (%s) of automation %s failed", index, kind, automation.pk)
            results.append({"type": kind, "ok": False, "detail": f"failed: {type(exc).__name__}: {str(exc)[:200]}"})
        else:
            results.append({"type": kind, "ok": True, "detail": detail})
    return results
