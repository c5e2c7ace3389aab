"""The agent under a strained server: Retry-After, refused and oversized log batches, lost claim answers.

No live server: a tiny HTTP server in a thread, or a client that stands in for one.
"""

import json
import logging
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.client import ApiClient, ApiError, ServerUnreachable
from agent.logs import LogShipper
from agent.worker import Agent, Execution


@pytest.fixture
def busy_server():
    """An HTTP server answering each POST with the next (status, headers[, JSON body]) of `server.answers`,
    then 200."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the name http.server expects
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            server.seen.append(time.monotonic())
            status, headers, *given = server.answers.pop(0) if server.answers else (200, {})
            body = b'{"error": {"message": "slow down"}}' if status >= 400 else b'{"ok": true}'
            body = json.dumps(given[0]).encode() if given else body
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.answers, server.seen = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.client = ApiClient(f"http://127.0.0.1:{server.server_address[1]}/api/accounts/a/workspaces/w", "k",
                              timeout=5)
    yield server
    server.shutdown()


def test_a_429_with_retry_after_is_retried_no_sooner_than_asked(busy_server):
    busy_server.answers = [(429, {"Retry-After": "1"})]
    assert busy_server.client.post("logs", {"logs": []}, retry_for=10) == {"ok": True}
    first, second = busy_server.seen
    assert 1.0 <= second - first < 1.5  # at least what the server asked, jittered upwards by at most 20 %


def test_a_503_with_an_http_date_retry_after_is_honoured_too(busy_server):
    later = datetime.now(timezone.utc) + timedelta(seconds=2)
    busy_server.answers = [(503, {"Retry-After": format_datetime(later, usegmt=True)})]
    assert busy_server.client.post("claim", {}, retry_for=10) == {"ok": True}
    first, second = busy_server.seen
    assert second - first >= 0.9  # the date has whole seconds: at least about a second


def test_a_retry_after_beyond_the_callers_window_gives_up_at_once_and_says_how_long(busy_server):
    busy_server.answers = [(429, {"Retry-After": "30"})]
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as raised:
        busy_server.client.post("claim", {}, retry_for=5)
    assert time.monotonic() - started < 1 and raised.value.retry_after == 30


def conflict(current_state):
    """A state report's 409, as runs/api/errors.py writes it."""
    message = f"Illegal transition of flow run x: {current_state} -> ..."
    return (409, {}, {"error": {"code": "illegal_transition", "message": message, "fields": {"state": [message]}},
                      "current_state": current_state})


def test_a_retried_state_report_that_finds_its_state_already_set_is_a_success(busy_server):
    # The first try reached the server, but its answer was lost on the way back (a proxy's 502).
    busy_server.answers = [(502, {}), conflict("COMPLETED")]
    answer = busy_server.client.post("flow_runs/x/state", {"state": "COMPLETED", "message": "done"}, retry_for=10)
    assert answer == {"state": "COMPLETED"} and len(busy_server.seen) == 2


def test_a_retried_state_report_that_finds_another_state_is_refused(busy_server):
    busy_server.answers = [(502, {}), conflict("CANCELLING")]
    with pytest.raises(ApiError) as refused:
        busy_server.client.post("flow_runs/x/state", {"state": "RUNNING"}, retry_for=10)
    assert refused.value.status == 409 and refused.value.body["current_state"] == "CANCELLING"


def test_a_first_try_finding_its_state_already_set_is_refused_since_someone_else_set_it(busy_server):
    # E.g. two agent processes under one name were handed the same run: only one may start it.
    busy_server.answers = [conflict("RUNNING")]
    with pytest.raises(ApiError) as refused:
        busy_server.client.post("flow_runs/x/state", {"state": "RUNNING"}, retry_for=10)
    assert refused.value.status == 409


def test_retry_after_is_capped():
    from agent.client import MAX_RETRY_AFTER_SECONDS, retry_after_seconds

    class Answer:
        status_code = 429
        headers = {"Retry-After": "86400"}

    assert retry_after_seconds(Answer()) == MAX_RETRY_AFTER_SECONDS
    Answer.headers = {"Retry-After": "soon"}
    assert retry_after_seconds(Answer()) is None


class FakeClient:
    """Answers posts with `answer(path, payload)`; records them."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def post(self, path, payload=None, **kwargs):
        self.calls.append((path, payload))
        return self.answer(path, payload)

    def with_key(self, key):
        self.keys = [*getattr(self, "keys", []), key]
        return self


def new_agent(client):
    return Agent(client, api_url="http://x", key="k", name="a", queues=["q"], query_seconds=0.3)


def test_a_poll_refused_with_retry_after_waits_that_long_before_the_next():
    def refuse(path, payload):
        raise ServerUnreachable("HTTP 429", retry_after=7)

    agent = new_agent(FakeClient(refuse))
    agent.poll_once()
    assert agent.next_poll_seconds == 7


def test_a_run_handed_out_again_by_the_claim_is_started_once(monkeypatch):
    run = {"id": "run-1", "name": "r", "flow": "f", "entrypoint": "m:f"}
    agent = new_agent(FakeClient(lambda path, payload: {"runs": [run], "cancelling": []}))
    started = []

    def start(execution):  # stands in for the runner's thread, still starting the run
        started.append(execution.run_id)
        execution.thread = threading.current_thread()

    monkeypatch.setattr("agent.worker.Execution.start", start)
    assert agent.poll_once() == 1
    assert agent.poll_once() == 0  # the claim's answer was lost, say: it comes again, and is skipped
    assert started == ["run-1"]


def test_the_poll_answer_cancels_the_runs_it_names(monkeypatch):
    agent = new_agent(FakeClient(lambda path, payload: {"runs": [], "cancelling": ["run-1"]}))
    cancelled = []

    class Running:
        thread = threading.current_thread()

        def cancel(self, grace):
            cancelled.append(grace)

    agent.executions = {"run-1": Running()}
    agent.cancel_grace_seconds = 12
    agent.poll_once()
    assert cancelled == [12]


def test_a_batch_too_large_for_the_server_is_split_until_it_fits(caplog):
    def at_most_three(path, payload):
        if len(payload["logs"]) > 3:
            raise ApiError(413, {"error": {"message": "too large"}})
        return {"stored": len(payload["logs"]), "refused": []}

    client = FakeClient(at_most_three)
    shipper = LogShipper(client)
    for i in range(10):
        shipper.add("run-1", f"line {i}")
    assert shipper.flush()
    delivered = [line["message"] for path, payload in client.calls if len(payload["logs"]) <= 3
                 for line in payload["logs"]]
    assert delivered == [f"line {i}" for i in range(10)]  # all of them, in order, none twice


def test_lines_the_server_refuses_are_logged_and_the_rest_kept(caplog):
    def refuse_the_second(path, payload):
        return {"stored": len(payload["logs"]) - 1, "refused": [{"index": 1, "reason": "flow_run_id: no such run"}]}

    shipper = LogShipper(FakeClient(refuse_the_second))
    for i in range(3):
        shipper.add("run-1", f"line {i}")
    with caplog.at_level(logging.WARNING, logger="agent.logs"):
        assert shipper.flush()
    assert "refused a log line of run run-1 (flow_run_id: no such run): line 1" in caplog.text
    assert not shipper.buffer


def test_a_batch_split_while_the_server_goes_away_keeps_what_was_not_sent():
    answers = iter([ApiError(413, {}), {"stored": 2, "refused": []}, ConnectionError("gone")])

    def answer(path, payload):
        outcome = next(answers)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    shipper = LogShipper(FakeClient(answer))
    for i in range(4):
        shipper.add("run-1", f"line {i}")
    assert not shipper.flush()
    assert [line["message"] for line in shipper.buffer] == ["line 2", "line 3"]


def server_taking_at_most(most, batches):
    """A fake server's log endpoint that refuses (400, as the real one does) a batch over `most` lines."""

    def answer(path, payload):
        if path == "register":
            return {"id": 1, "name": "a", "queues": ["q"], "task_result_max_bytes": 100,
                    **({"log_batch_max_lines": most} if most is not None else {})}
        if len(payload["logs"]) > (most or 1000):
            raise ApiError(400, {"error": {"message": f"logs: At most {most} lines per batch"}})
        batches.append([line["message"] for line in payload["logs"]])
        return {"stored": len(payload["logs"]), "refused": []}

    return answer


def test_the_agent_never_sends_more_log_lines_per_batch_than_its_server_takes():
    batches = []
    agent = new_agent(FakeClient(server_taking_at_most(3, batches)))
    assert agent._register()
    shipper = Execution(agent, {"id": "run-1", "token": "t"}).new_shipper()
    for i in range(10):
        shipper.add("run-1", f"line {i}")
    assert shipper.flush()
    assert [len(batch) for batch in batches] == [3, 3, 3, 1]
    assert [message for batch in batches for message in batch] == [f"line {i}" for i in range(10)]


def test_the_notes_of_dropped_lines_count_in_the_batch_too():
    batches = []
    shipper = LogShipper(FakeClient(server_taking_at_most(3, batches)), capacity=4, server_max_lines=3)
    for run in ("run-1", "run-2", "run-3", "run-4"):
        shipper.add(run, f"{run} lost")  # all four pushed out by the lines below: four notes
    for i in range(4):
        shipper.add("run-5", f"line {i}")
    assert shipper.flush()
    assert all(len(batch) <= 3 for batch in batches)
    messages = [message for batch in batches for message in batch]
    assert sum("dropped 1 log line(s)" in message for message in messages) == 4
    assert [m for m in messages if m.startswith("line")] == [f"line {i}" for i in range(4)]


def test_against_a_server_that_does_not_say_its_line_limit_the_agent_keeps_under_the_default():
    from agent.logs import SERVER_BATCH_MAX_LINES

    batches = []
    agent = new_agent(FakeClient(server_taking_at_most(None, batches)))
    assert agent._register() and agent.log_batch_max_lines is None
    shipper = Execution(agent, {"id": "run-1", "token": "t"}).new_shipper()
    for i in range(SERVER_BATCH_MAX_LINES + 1):
        shipper.add("run-1", "x")
    assert shipper.flush()
    assert max(len(batch) for batch in batches) <= SERVER_BATCH_MAX_LINES
    assert sum(len(batch) for batch in batches) == SERVER_BATCH_MAX_LINES + 1


def test_the_agent_never_claims_more_runs_at_once_than_its_server_hands_out():
    claims = []

    def server(path, payload):
        if path == "register":
            return {"id": 1, "name": "a", "queues": ["q"], "task_result_max_bytes": 100, "claim_max_runs": 5}
        claims.append(payload["max_runs"])
        return {"runs": [], "cancelling": []}

    agent = new_agent(FakeClient(server))
    agent.limit = 300
    assert agent._register()
    agent.poll_once()
    assert claims == [5]


def test_the_runner_is_told_the_servers_line_limit():
    from agent.runner import Runner

    env = {"ORCHESTRATOR_FLOW_RUN_ID": "run-1", "ORCHESTRATOR_API_URL": "http://x", "ORCHESTRATOR_RUN_TOKEN": "k",
           "ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES": "7"}
    assert Runner(env).shipper.batch_lines == 7
    env["ORCHESTRATOR_AGENT_LOG_BATCH_MAX_LINES"] = ""  # the agent's server did not say
    assert 1 <= Runner(env).shipper.batch_lines <= 1000


def test_a_runner_waits_out_an_away_server_as_long_for_its_last_lines_as_for_its_final_state():
    from agent import sdk, worker
    from agent.runner import EXIT_REPORTED, Runner

    runner = Runner({"ORCHESTRATOR_FLOW_RUN_ID": "run-1", "ORCHESTRATOR_API_URL": "http://x",
                     "ORCHESTRATOR_RUN_TOKEN": "k"})
    waits = {}

    def ship_last_lines(drain_seconds=0.0):
        waits["last lines"] = drain_seconds
        return True

    class Server:
        def post(self, path, payload=None, *, retry_for=0.0, stop=None):
            waits["final state"] = retry_for
            return {"state": payload["state"]}

    runner.shipper.stop, runner.client = ship_last_lines, Server()
    assert runner._end_run("COMPLETED", "done") == EXIT_REPORTED
    # One window, the one the agent's and the tasks' state reports retry in too.
    assert waits == {"last lines": sdk.STATE_REPORT_RETRY_SECONDS, "final state": sdk.STATE_REPORT_RETRY_SECONDS}
    assert worker.REPORT_RETRY_SECONDS == sdk.STATE_REPORT_RETRY_SECONDS


def test_a_handed_back_runner_ships_its_last_lines_before_the_report_that_ends_its_token():
    """A hand-back (SCHEDULED) starts a new attempt: the server refuses the old attempt's token from
    then on (`superseded`), its log lines too. The lines saying why the run was handed back went after
    the report, as every stopping runner's did, and were refused and lost."""
    import time

    from agent.runner import EXIT_REPORTED, HANDED_BACK, Runner

    runner = Runner({"ORCHESTRATOR_FLOW_RUN_ID": "run-1", "ORCHESTRATOR_API_URL": "http://x",
                     "ORCHESTRATOR_RUN_TOKEN": "k"})
    runner.orphaned, runner.stop_reason = True, HANDED_BACK
    runner.stopped_at = time.monotonic()
    runner.deadline = runner.stopped_at + 15  # stopping, as the stopper set it

    class Server:
        """The attempt's token is good until the run is handed back."""

        def __init__(self):
            self.handed_back, self.stored = False, []

        def post(self, path, payload=None, *, retry_for=0.0, stop=None):
            if self.handed_back:
                raise ApiError(409, SUPERSEDED_ANSWER)
            if path == "logs":
                self.stored += [line["message"] for line in payload["logs"]]
                return {"stored": len(payload["logs"]), "refused": []}
            self.handed_back = payload["state"] == "SCHEDULED"
            return {"state": payload["state"]}

    runner.client = runner.shipper.client = server = Server()
    runner.shipper.start()
    runner.shipper.add("run-1", "agent.runner: Agent a (pid 1) is gone; this runner finishes the run ...")
    assert runner._end_run("SCHEDULED", "Handed back by its runner.") == EXIT_REPORTED
    assert server.handed_back
    assert server.stored == ["agent.runner: Agent a (pid 1) is gone; this runner finishes the run ..."]


def test_custom_logging_levels_are_sent_as_the_servers_nearest_level_below():
    shipper = LogShipper(FakeClient(lambda path, payload: None))
    for level in (5, 25, 45, 60):
        shipper.add("run-1", "x", level=level)
    assert [line["level"] for line in shipper.buffer] == [10, 20, 40, 50]


def test_the_agent_ships_the_lines_a_dead_runner_had_not_delivered(tmp_path, monkeypatch):
    from agent import runner as runner_module
    from agent.worker import Execution

    scratch = (tmp_path / "scratch").open("w+b")
    batches = []
    shipper = LogShipper(FakeClient(lambda path, payload: batches.append(payload["logs"])))
    shipper.journal = runner_module.LogJournal(scratch.fileno(), capacity=100)
    shipper.add("run-1", "delivered")
    assert shipper.flush() and [line["message"] for line in batches[0]] == ["delivered"]
    shipper.add("run-1", "not yet", level=logging.WARNING, task_run_id="task-1")
    # The runner dies here. Its agent reads the scratch file.
    scratch.seek(0)
    lines = scratch.read().decode().split("\n")
    agent = new_agent(FakeClient(lambda path, payload: None))
    for_the_run = LogShipper(FakeClient(lambda path, payload: None))
    left = Execution(agent, {"id": "run-1"})._ship_what_the_runner_left(lines + ["Traceback: boom"], for_the_run)
    assert left is None
    assert [(line["message"], line["level"], line["task_run_id"]) for line in for_the_run.buffer] == [
        ("not yet", 30, "task-1"), ("[runner] Traceback: boom", 40, None)]


def test_the_journal_is_rewritten_with_only_undelivered_lines_when_it_grows(tmp_path, monkeypatch):
    from agent import runner as runner_module

    monkeypatch.setattr(runner_module, "JOURNAL_MAX_BYTES", 2000)
    scratch = (tmp_path / "scratch").open("w+b")
    shipper = LogShipper(FakeClient(lambda path, payload: None))
    shipper.journal = runner_module.LogJournal(scratch.fileno(), capacity=100)
    for i in range(30):
        shipper.add("run-1", f"line {i}")
    shipper.flush()  # all delivered, past the size: the file starts over
    shipper.add("run-1", "after")
    assert scratch.seek(0, 2) < 300
    scratch.seek(0)
    assert b"line 29" not in scratch.read()


SUPERSEDED_ANSWER = {"error": {"code": "superseded", "message": "another attempt has the run", "fields": {}}}


def refuse_as_superseded(path, payload):
    raise ApiError(409, SUPERSEDED_ANSWER)


def test_a_heartbeat_refused_as_superseded_tells_the_runner_to_stop():
    from agent.heartbeats import SUPERSEDED, _beat

    told = []
    _beat(FakeClient(refuse_as_superseded), [("flow_runs", "run-1")], told.append)
    assert told == [SUPERSEDED]
    stale = lambda path, payload: (_ for _ in ()).throw(ApiError(409, {"error": {"code": "stale_transition"}}))  # noqa: E731
    _beat(FakeClient(stale), [("flow_runs", "run-1")], told.append)
    assert told == [SUPERSEDED]  # another 409 is no reason to stop


def test_a_task_report_refused_as_superseded_stops_the_flow_where_it_is():
    from agent import sdk

    stopped = []
    ctx = sdk.RunContext(FakeClient(refuse_as_superseded), "run-1", heartbeats=None,
                         on_superseded=lambda: stopped.append(True))
    with pytest.raises(sdk.FlowRunStopped):
        ctx.report("flow_runs/run-1/task_runs", {"task_key": "t"})
    assert stopped == [True]


# --- What a runner's exit proves -----------------------------------------------------------------

# Stands in for `python -m agent.runner`: leaves a child that ignores SIGTERM in its process group
# (its pid in argv[1]), writes what argv[2] says to its scratch file, and exits with argv[3].
FAKE_RUNNER = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE)
child.stdout.readline()
open(sys.argv[1], "w").write(str(child.pid))
sys.stdout.write(sys.argv[2].replace("RS", "\\x1e"))
sys.stdout.flush()
os._exit(int(sys.argv[3]))
"""


REAL_POPEN = subprocess.Popen


def run_fake_runner(monkeypatch, tmp_path, said, code):
    """One Execution whose runner is FAKE_RUNNER; returns the final-state posts the agent made, each with
    whether the runner's child was still alive when it was made."""
    from agent.worker import Execution

    from .conftest import alive

    child_pid = tmp_path / "child"

    def popen(args, **kwargs):
        return REAL_POPEN([sys.executable, "-c", FAKE_RUNNER, str(child_pid), said, str(code)], **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    reports = []

    def answer(path, payload):
        if path.endswith("/state") and payload["state"] != "RUNNING":
            reports.append((payload["state"], payload["message"], alive(int(child_pid.read_text()))))
        return {}

    Execution(new_agent(FakeClient(answer)), {"id": "run-1", "entrypoint": "m:f"})._execute()
    return reports


def test_exit_0_without_the_runners_mark_is_a_crash(monkeypatch, tmp_path):
    [(state, message, _)] = run_fake_runner(monkeypatch, tmp_path, "", 0)
    assert (state, message) == ("CRASHED", "The flow's runner exited with code 0 without reporting the run's final "
                                           "state (did the flow call os._exit?).")


def test_exit_0_with_the_runners_mark_is_left_alone(monkeypatch, tmp_path):
    assert run_fake_runner(monkeypatch, tmp_path, "RSorchestrator-reported COMPLETED\n", 0) == []


def test_a_superseded_runner_is_believed_only_with_its_mark(monkeypatch, tmp_path):
    assert run_fake_runner(monkeypatch, tmp_path, "RSorchestrator-reported superseded\n", 4) == []
    [(state, _, _)] = run_fake_runner(monkeypatch, tmp_path, "", 4)
    assert state == "CRASHED"


def test_the_agent_kills_the_runners_group_before_it_reports(monkeypatch, tmp_path):
    [(state, _, child_alive)] = run_fake_runner(monkeypatch, tmp_path, "", 9)
    assert state == "CRASHED" and not child_alive


def test_a_handback_is_over_within_half_the_servers_handback_delay():
    import os

    from agent.runner import CANCELLED, HANDED_BACK, Runner

    runner = Runner({"ORCHESTRATOR_FLOW_RUN_ID": "run-1", "ORCHESTRATOR_API_URL": "http://x", "ORCHESTRATOR_RUN_TOKEN": "t",
                     "ORCHESTRATOR_AGENT_CANCEL_GRACE_SECONDS": "30", "ORCHESTRATOR_RUNNER_STOP_WINDOW_SECONDS": "10",
                     "ORCHESTRATOR_HANDBACK_DELAY_SECONDS": "30"})
    os.close(runner.stop_wake_read), os.close(runner.stop_wake_write)
    assert runner.stop_budget(CANCELLED) == (30, 40)  # (grace, hard deadline)
    assert runner.stop_budget(HANDED_BACK) == (7.5, 15)  # the run is due again 30 s after its hand-back
