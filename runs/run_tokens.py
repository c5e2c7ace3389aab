"""A flow run's report token: who may report for the run, and for which attempt.

A claim gives the agent one token per run; the agent hands it to the run's runner instead of its
own API key, and every report about the run (its state, its heartbeat, its task runs, its logs)
authenticates with it. So only the process that claimed a run reports for it, and the agent's
key never enters a flow's environment.

The token also fences attempts. It names the run's `token_generation`, which moves whenever the
run is claimed or goes back to SCHEDULED (a Lazarus reschedule, a hand-back, a retry, the agent
monitor returning an offline agent's runs): a runner of an earlier attempt, frozen on a node that
comes back, finds its reports refused as `superseded` and stops, instead of running tasks a
second time beside the new attempt. Verdicts that end a run (the Zombie Killer's CRASHED) do not
move it, so a slow but alive runner's late COMPLETED is still heard.

Nothing secret is stored: the token is an HMAC of (run, its workspace, generation) under
SECRET_KEY, checked without a query. Rotating SECRET_KEY ends the tokens of runs in flight (their reports answer 401
and the runs are recovered like those of a dead node).
"""

import functools
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils.crypto import constant_time_compare
from django.utils.encoding import force_bytes

PREFIX = "orr_"
_SALT = "orchestrator.run-token.v1"
_FORMAT = re.compile(r"orr_([0-9a-f]{32})_([0-9]{1,19})_([0-9]{1,10})_([0-9a-f]{64})")


@dataclass(frozen=True)
class RunGrant:
    """What a valid token proves: the right to report for `run_id` (of workspace `workspace_id`) in
    its attempt `generation`."""

    run_id: uuid.UUID
    workspace_id: int
    generation: int


class InvalidRunToken(Exception):
    """The value looks like a run token (its prefix) but is malformed or was not made here."""


@functools.lru_cache(maxsize=4)
def _keyed(secret_key):
    """Django's salted_hmac(_SALT, …, algorithm="sha256") with its key derived once per SECRET_KEY,
    not once per token: a claim makes a token for each of up to hundreds of runs."""
    key = hashlib.sha256(force_bytes(_SALT) + force_bytes(secret_key)).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(run_id, workspace_id, generation):
    mac = _keyed(settings.SECRET_KEY).copy()
    mac.update(f"{run_id.hex}:{workspace_id}:{generation}".encode())
    return mac.hexdigest()


def token_for(run_id, workspace_id, generation):
    """The token of attempt `generation` of run `run_id` of workspace `workspace_id`."""
    run_id = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    return f"{PREFIX}{run_id.hex}_{workspace_id}_{generation}_{_mac(run_id, workspace_id, generation)}"


def token_of(run):
    """The token of the run's current attempt (the run as loaded)."""
    return token_for(run.pk, run.workspace_id, run.token_generation)


def is_run_token(value):
    return value.startswith(PREFIX)


def read_token(value):
    """The RunGrant a token proves, or InvalidRunToken."""
    match = _FORMAT.fullmatch(value)
    if not match:
        raise InvalidRunToken("This run token is malformed.")
    run_id, workspace_id, generation = uuid.UUID(match[1]), int(match[2]), int(match[3])
    if not constant_time_compare(match[4], _mac(run_id, workspace_id, generation)):
        raise InvalidRunToken("This run token was not issued by this server.")
    return RunGrant(run_id, workspace_id, generation)
