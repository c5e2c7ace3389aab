"""The agent's HTTP client: Bearer key, JSON, retries with backoff while the server is away."""

import email.utils
import logging
import random
import time
from datetime import datetime, timezone

import requests

log = logging.getLogger("agent.client")

# Answers that mean "try again later", not "you are wrong".
RETRYABLE_STATUS = {429, 502, 503, 504}
MAX_BACKOFF_SECONDS = 30.0
# A server's Retry-After is honoured up to this long (seconds): a wrong header must not park an agent for a day.
MAX_RETRY_AFTER_SECONDS = 300.0


class ApiError(Exception):
    """The server refused the request (4xx, or 5xx after retries ran out)."""

    def __init__(self, status, body, retry_after=None):
        self.status = status
        self.body = body
        self.retry_after = retry_after
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        self.code = error.get("code") if isinstance(error, dict) else None
        super().__init__(f"HTTP {status}: {message or body}")

    @property
    def superseded(self):
        """The report was of an attempt the run no longer has (it was rescheduled or claimed again):
        whoever sent it must stop the flow and report nothing more."""
        return self.status == 409 and self.code == "superseded"


class ServerUnreachable(Exception):
    """The server did not answer within the time the caller was willing to retry.

    `retry_after`: seconds the server asked to wait (429/503 with Retry-After), else None.
    """

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(response, now=None):
    """The wait a 429/503 asks for in Retry-After (seconds or an HTTP date), capped; None without one."""
    value = response.headers.get("Retry-After") if response.status_code in (429, 503) else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def backoff_seconds(delay, retry_after=None):
    """How long to wait before the next try: the backoff `delay`, or at least `retry_after`, jittered
    so that a fleet of agents does not retry in step."""
    if retry_after is not None:
        return max(retry_after * (1 + 0.2 * random.random()), delay * (0.5 + random.random()))
    return delay * (0.5 + random.random())


class ApiClient:
    """Talks to one workspace's agent API: `base_url` is the workspace prefix, e.g.
    http://127.0.0.1:8000/api/accounts/demo/workspaces/demo."""

    def __init__(self, base_url, key, *, timeout=10.0):
        self.workspace_url = base_url.rstrip("/")
        self.base_url = self.workspace_url + "/agent/"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {key}", "Accept": "application/json"})

    def with_key(self, key):
        """A client of the same workspace that authenticates with `key` (e.g. a run's report token)."""
        return type(self)(self.workspace_url, key, timeout=self.timeout)

    def post(self, path, payload=None, *, retry_for=0.0, stop=None):
        """POST JSON; returns the decoded answer (None for 204).

        Retries connection errors and 429/5xx with exponential backoff for up to `retry_for`
        seconds (None: until `stop` is set). Raises ApiError on a refusal, ServerUnreachable when
        time ran out.
        """
        return self._request("POST", path, payload, retry_for, stop)

    def get(self, path, *, retry_for=0.0, stop=None):
        return self._request("GET", path, None, retry_for, stop)

    def _request(self, method, path, payload, retry_for, stop):
        deadline = None if retry_for is None else time.monotonic() + retry_for
        delay = 0.5
        maybe_done = False  # an earlier try may have been carried out with its answer lost
        while True:
            retry_after = None
            try:
                response = self.session.request(method, self.base_url + path, json=payload, timeout=self.timeout)
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
                maybe_done = True
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                retry_after = retry_after_seconds(response)
                if response.status_code not in RETRYABLE_STATUS and response.status_code < 500:
                    body = _body(response)
                    if maybe_done and _already_in_state(response.status_code, payload, body):
                        return {"state": body["current_state"]}
                    raise ApiError(response.status_code, body, retry_after)
                problem = f"HTTP {response.status_code}"
                maybe_done = maybe_done or response.status_code >= 500  # e.g. a proxy's 502/504
                if deadline is not None and time.monotonic() >= deadline and response.status_code >= 500:
                    raise ApiError(response.status_code, _body(response), retry_after)
            if deadline is not None and time.monotonic() >= deadline:
                raise ServerUnreachable(f"{method} {path}: {problem}", retry_after)
            wait = backoff_seconds(delay, retry_after)
            if deadline is not None:
                left = max(deadline - time.monotonic(), 0)
                if retry_after is not None and retry_after > left:
                    # Asking again sooner than the server said would only be refused again.
                    raise ServerUnreachable(f"{method} {path}: {problem}, retry after {retry_after:g} s", retry_after)
                wait = min(wait, left)
            log.debug("%s %s failed (%s); retrying in %.1f s", method, path, problem, wait)
            if stop is not None and stop.wait(wait):
                raise ServerUnreachable(f"{method} {path}: stopped while retrying ({problem})")
            if stop is None:
                time.sleep(wait)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def _already_in_state(status, payload, body):
    """A retried state report refused (409) because the run is already in the reported state.

    An earlier try's answer was lost (a timeout, a dropped connection, a proxy's 502) and this retry
    finds its work done: a success, not a refusal. A report's 409 names the run's state as
    `current_state` (runs/api/errors.py). Only after such a try: a first try answered 409 RUNNING
    means someone else (an agent process with the same name) started the run, and it must not run twice.
    """
    return (status == 409 and isinstance(payload, dict) and isinstance(body, dict)
            and payload.get("state") is not None and body.get("current_state") == payload["state"])


def _body(response):
    try:
        return response.json()
    except ValueError:
        return response.text[:500]
