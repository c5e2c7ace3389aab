"""The agent shows a quota refusal in its log once, not at every poll, and keeps polling."""

import logging

from agent.worker import Agent

REFUSAL = {"code": "quota_reached", "limit": 5000, "used": 5000, "month": "2026-12",
           "resets_at": "2027-01-01T00:00:00Z", "raised_by": "a workspace admin",
           "message": "Workspace acme/prod has used its monthly task-run quota: 5,000 of 5,000 …"}


class Server:
    """Answers each claim with the next of `quotas`; records the claims."""

    def __init__(self, quotas):
        self.quotas, self.claims = list(quotas), 0

    def post(self, path, payload=None, **kwargs):
        assert path == "claim"
        self.claims += 1
        return {"runs": [], "cancelling": [], "quota": self.quotas.pop(0)}


def test_the_refusal_is_logged_once_and_polling_goes_on(caplog):
    raised = {**REFUSAL, "limit": 6000, "used": 6000}
    january = {**REFUSAL, "month": "2027-01", "used": 5000}
    server = Server([REFUSAL, {**REFUSAL, "used": 5003}, REFUSAL, None, None, REFUSAL, raised, raised, january])
    agent = Agent(server, api_url="http://x", key="k", name="a", queues=["q"], query_seconds=10)
    with caplog.at_level(logging.INFO, logger="agent.worker"):
        for _ in range(9):
            assert agent.poll_once() == 0
            assert agent.next_poll_seconds == 10
    assert server.claims == 9
    lines = [r.getMessage() for r in caplog.records if "quota" in r.getMessage()]
    assert len(lines) == 5, lines
    assert "5,000 of 5,000" in lines[0] and "Still polling every 10 s" in lines[0]
    assert lines[1] == "The workspace's monthly task-run quota allows claims again."
    assert "5,000 of 5,000" in lines[2]  # refused again after a pause: said again, once
    assert [r.levelname for r in caplog.records if "quota" in r.getMessage()] == [
        "WARNING", "INFO", "WARNING", "WARNING", "WARNING"]
