"""deploy/k8s/: every resource passes kubernetes-validate in strict mode, every pod meets Pod Security
"restricted", members bind every address and are probed with ``agentmesh health``, and the mesh file the
ConfigMap carries is a valid mesh config (issue 14)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentmesh.cli.main import build_parser
from agentmesh.configfile import parse_config
from agentmesh.runtime.app import load_object

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
FILES = sorted(K8S.glob("*.yaml"))
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
MISSING = "kubernetes-validate not installed: .venv/bin/pip install kubernetes-validate"


def _docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def _pods() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in _docs():
        if doc["kind"] in POD_KINDS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_the_manifests_pass_kubernetes_validate_strictly() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING)
    assert FILES
    version = kubernetes_validate.latest_version()
    for path, doc in _docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {e}", pytrace=False)
    kinds = {doc["kind"] for _, doc in _docs()}
    assert {"Namespace", "ConfigMap", "StatefulSet", "Deployment", "Service", "NetworkPolicy"} <= kinds


def test_every_pod_meets_pod_security_restricted() -> None:
    """The fields the "restricted" profile checks, on every pod and every (init) container."""
    namespaces = [doc for _, doc in _docs() if doc["kind"] == "Namespace"]
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = dict(_pods())
    assert {"StatefulSet/control", "Deployment/ingestor", "Deployment/summarizer", "Deployment/validator",
            "Deployment/bridge", "Deployment/redis"} <= set(pods)
    allowed_volumes = {"configMap", "secret", "emptyDir", "persistentVolumeClaim", "projected", "downwardAPI",
                       "csi", "ephemeral", "name"}
    for where, spec in pods.items():
        pod_sc = spec.get("securityContext", {})
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for volume in spec.get("volumes", []):
            assert set(volume) <= allowed_volumes, (where, volume)
        for c in _containers(spec):
            sc = c.get("securityContext", {})
            what = f"{where} container {c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert not sc.get("capabilities", {}).get("add"), what
            assert not sc.get("privileged"), what
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, what
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) != 0, what
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), what
            assert not any("hostPort" in p for p in c.get("ports", [])), what


def test_members_bind_every_address_and_are_probed_with_agentmesh_health(tmp_path: Path) -> None:
    config_maps = [doc for _, doc in _docs() if doc["kind"] == "ConfigMap"]
    config = parse_config(yaml.safe_load(config_maps[0]["data"]["mesh.yaml"]), tmp_path)
    assert config.control.bind_address == "0.0.0.0:7100"
    assert config.control.address.startswith("control.agentmesh.svc")
    for name, agent in config.agents.items():
        assert agent.bind_address.startswith("0.0.0.0:") and agent.address.startswith(f"{name}.agentmesh.svc")
        assert agent.app is not None
        load_object(agent.app)  # the apps the image ships (examples/) exist
    assert config.bridge.listen.startswith("0.0.0.0:")
    assert config.rate_limits.backend.startswith("redis://redis.agentmesh.svc")

    parser = build_parser()
    members = set(config.members())
    probed = set()
    for where, spec in _pods():
        if "redis" in where:
            continue
        main = spec["containers"][0]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = main[kind]["exec"]["command"]
            assert command[:2] == ["agentmesh", "health"], (where, kind)
            args = parser.parse_args(command[1:])  # the probe is a command that parses
            assert args.name in members and args.config == Path("/etc/agentmesh/mesh.yaml")
            probed.add(args.name)
        port = main["ports"][0]["containerPort"]
        listen = {**{n: a.bind_address for n, a in config.agents.items()},
                  config.control.name: config.control.bind_address, config.bridge.name: config.bridge.listen}
        assert listen[args.name].endswith(f":{port}"), where
    assert probed == members


def test_the_network_policy_lets_the_bridges_clients_in() -> None:
    policies = {doc["metadata"]["name"]: doc["spec"] for _, doc in _docs() if doc["kind"] == "NetworkPolicy"}
    bridge = [p for p in policies.values() if p["podSelector"]["matchLabels"].get("app.kubernetes.io/name") == "bridge"]
    assert bridge, "no NetworkPolicy admits the bridge's external clients"
    rule = bridge[0]["ingress"][0]
    assert "from" not in rule and rule["ports"] == [{"port": 8443, "protocol": "TCP"}]


def test_the_dockerfile_installs_the_package_as_a_non_root_user() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "pip install" in text and "USER 10001:10001" in text
    assert 'ENTRYPOINT ["agentmesh"]' in text
