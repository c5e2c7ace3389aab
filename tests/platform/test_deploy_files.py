"""docker-compose.yml and deploy/k8s: every role, the same commands, probes where they belong.

The files cannot be run here (no container runtime or cluster on the test machines); what can be
checked is that they say what the README says: the Procfile's roles with the production commands,
two web processes and two beats, /healthz on the web tier and the agent's /health on agents, and
that both read the same configuration.
"""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = {"web", "worker", "beat", "agent"}


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def manifests():
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def test_compose_runs_every_role_against_postgresql_and_redis():
    services = compose()["services"]
    assert ROLES | {"postgres", "redis", "migrate"} <= set(services)
    for role in ROLES | {"migrate"}:
        env = services[role]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://"), role
        assert env["DEBUG"] == "false" and "SECRET_KEY" in env, role
    for role in ROLES:
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["web"]["deploy"]["replicas"] == 2 and services["beat"]["deploy"]["replicas"] == 2
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "8080/health" in " ".join(services["agent"]["healthcheck"]["test"])
    assert "--appendonly" in services["redis"]["command"]  # the event buffer survives a Redis restart
    # Published only on this host.
    assert all(port.startswith("127.0.0.1:") for port in services["web"]["ports"])


def test_compose_and_kubernetes_give_each_role_the_same_command():
    services = compose()["services"]
    deployments = {doc["metadata"]["name"].removeprefix("orchestrator-"): doc for doc in manifests()
                   if doc["kind"] == "Deployment"}
    assert set(deployments) == ROLES
    for role in ("web", "worker"):
        [container] = deployments[role]["spec"]["template"]["spec"]["containers"]
        assert container["command"] == services[role]["command"], role
    assert services["web"]["command"][0] == "gunicorn" and services["worker"]["command"][:4] == [
        "celery", "-A", "orchestrator", "worker"]


def test_kubernetes_probes_and_replicas():
    docs = manifests()
    deployments = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}
    web = deployments["orchestrator-web"]["spec"]
    [container] = web["template"]["spec"]["containers"]
    assert web["replicas"] == 2
    assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    [agent] = deployments["orchestrator-agent"]["spec"]["template"]["spec"]["containers"]
    assert agent["readinessProbe"]["httpGet"]["path"] == agent["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "0.0.0.0" in agent["command"]  # the probe comes from outside the container
    assert deployments["orchestrator-beat"]["spec"]["replicas"] == 2
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        if name != "orchestrator-agent":
            assert {"configMapRef": {"name": "orchestrator"}} in container["envFrom"], name
            assert {"secretRef": {"name": "orchestrator"}} in container["envFrom"], name
    [job] = [doc for doc in docs if doc["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["migrate", "--noinput"]
    kustomization = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {path.name for path in (ROOT / "deploy" / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


def test_the_image_builds_from_the_pinned_requirements_and_runs_as_a_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile and "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert "USER orchestrator" in dockerfile and "collectstatic" in dockerfile
