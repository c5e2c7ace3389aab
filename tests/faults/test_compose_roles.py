"""The production commands of docker-compose.yml, run here as processes: they make a working system.

No container runtime exists on the test machines, so each role's command is taken from the
compose file and run as a local process with the compose file's environment (DEBUG off, JSON
logs), pointed at the test database and a private Redis, bound to 127.0.0.1: the one-shot
migrate, gunicorn, a Celery worker, two beats and the agent. A run made due is claimed and
COMPLETED by the agent, its events reach the events table through the Redis stream and the
persister that beat triggers, and no service pass fails.
"""

import os
import subprocess
import sys
from pathlib import Path

from django.utils import timezone

from events.models import Event
from runs.models import Flow, FlowRun, State, WorkQueue
from services.models import ServicePass
from tests.agent.conftest import free_port, wait_for
from tests.faults.conftest import WebServer, database_url, request
from tests.platform.test_deploy_files import compose

BIN = Path(sys.executable).parent


def local(command, replacements):
    """A compose command as a local process runs it: this venv's programs, this host's addresses."""
    programs = {"python": sys.executable, "gunicorn": str(BIN / "gunicorn"), "celery": str(BIN / "celery")}
    out = [programs.get(command[0], command[0])]
    for part in command[1:]:
        for old, new in replacements.items():
            part = part.replace(old, new)
        out.append(part)
    return out


def test_the_compose_roles_run_a_flow_end_to_end(postgres, private_redis, processes, tmp_path):
    services = compose()["services"]
    web_port, health_port = free_port(), free_port()
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    env = {**os.environ, **{key: str(value) for key, value in services["web"]["environment"].items()},
           "SECRET_KEY": "compose-roles-test-" + "x" * 40,
           "ORCHESTRATOR_SECRETS_KEY": "Dh0Xl1jD6E9p1Xw1q9z5cVQm3k9n8Rr6b2x4y7z0A1c=",
           "DATABASE_URL": database_url(postgres), "REDIS_URL": private_redis.url,
           "ALLOWED_HOSTS": "127.0.0.1,localhost", "ORCHESTRATOR_VAR_DIR": str(var_dir),
           "ORCHESTRATOR_AGENT_QUERY_SECONDS": "1", "ORCHESTRATOR_AGENT_WEBSERVER_PORT": str(health_port)}
    assert env["DEBUG"] == "false" and env["LOG_FORMAT"] == "json"
    replacements = {"0.0.0.0:8000": f"127.0.0.1:{web_port}", "0.0.0.0": "127.0.0.1",
                    "http://web:8000": f"http://127.0.0.1:{web_port}",
                    "/var/lib/orchestrator": str(var_dir), "/tmp/celerybeat-schedule": str(tmp_path / "beat")}
    # sh -c "python manage.py migrate … && python manage.py seed_demo"
    shell = services["migrate"]["command"][-1].replace("python ", f"{sys.executable} ")
    done = subprocess.run(["sh", "-c", shell], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (var_dir / "agent.key").exists()

    web = processes("web", local(services["web"]["command"], replacements), env)
    server = WebServer(web, web_port)
    processes("worker", local(services["worker"]["command"], replacements), env)
    for n in range(services["beat"]["deploy"]["replicas"]):
        processes(f"beat-{n}", local(services["beat"]["command"], {**replacements, "/tmp/celerybeat-schedule":
                                                                      str(tmp_path / f"beat-{n}")}), env)
    wait_for(lambda: server.get("/healthz")[0] == 200, timeout=60,
             what=lambda: f"gunicorn to answer /healthz 200\n{web.output()}")
    agent = processes("agent", local(services["agent"]["command"], replacements), env)
    wait_for(lambda: request("GET", f"http://127.0.0.1:{health_port}/health")[0] == 200, timeout=60,
             what=lambda: f"the agent's /health to answer 200\n{agent.output()}")

    flow = Flow.objects.get(workspace__slug="demo", name="hello-orchestrator")
    run = FlowRun.objects.create(workspace=flow.workspace, flow=flow, flow_version=flow.latest_version,
                                 state=State.SCHEDULED, scheduled_start=timezone.now(), name="compose-smoke",
                                 work_queue=WorkQueue.objects.get(workspace=flow.workspace, name="default"))
    wait_for(lambda: FlowRun.objects.get(pk=run.pk).state == State.COMPLETED, timeout=90,
             what=lambda: f"the run to complete (it is {FlowRun.objects.get(pk=run.pk).state})\n{agent.output()}")
    wait_for(lambda: Event.objects.filter(name="flow-run.state.completed", resource__id=str(run.pk)).exists(),
             timeout=60, what="its event to be persisted through the Redis stream")
    assert not ServicePass.objects.filter(ok=False).exists(), list(
        ServicePass.objects.filter(ok=False).values_list("service", "error"))
