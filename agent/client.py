"""The agent's HTTP client: Bearer key, JSON, retries with backoff while the server is away."""

import logging
import random
import time

import requests

log = logging.getLogger("agent.client")

# Answers that mean "try again later", not "you are wrong".
RETRYABLE_STATUS = {429, 502, 503, 504}
MAX_BACKOFF_SECONDS = 30.0


class ApiError(Exception):
    """The server refused the request (4xx, or 5xx after retries ran out)."""

    def __init__(self, status, body):
        self.status = status
        self.body = body
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {message or body}")


class ServerUnreachable(Exception):
    """The server did not answer within the time the caller was willing to retry."""


class ApiClient:
    """Talks to one workspace's agent API: `base_url` is the workspace prefix, e.g.
    http://127.0.0.1:8000/api/accounts/demo/workspaces/demo."""

    def __init__(self, base_url, key, *, timeout=10.0):
        self.base_url = base_url.rstrip("/") + "/agent/"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {key}", "Accept": "application/json"})

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
        while True:
            try:
                response = self.session.request(method, self.base_url + path, json=payload, timeout=self.timeout)
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                if response.status_code not in RETRYABLE_STATUS and response.status_code < 500:
                    raise ApiError(response.status_code, _body(response))
                problem = f"HTTP {response.status_code}"
                if deadline is not None and time.monotonic() >= deadline and response.status_code >= 500:
                    raise ApiError(response.status_code, _body(response))
            if deadline is not None and time.monotonic() >= deadline:
                raise ServerUnreachable(f"{method} {path}: {problem}")
            wait = delay * (0.5 + random.random())  # jitter: a fleet of agents must not retry in step
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0))
            log.debug("%s %s failed (%s); retrying in %.1f s", method, path, problem, wait)
            if stop is not None and stop.wait(wait):
                raise ServerUnreachable(f"{method} {path}: stopped while retrying ({problem})")
            if stop is None:
                time.sleep(wait)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def _body(response):
    try:
        return response.json()
    except ValueError:
        return response.text[:500]
