"""A mesh across three hosts (issue 14), for real: three network namespaces joined by a bridge, each with its
own IP and the others' names in its own /etc/hosts (``/etc/netns/<ns>/hosts``). The control plane runs on
host 1, agent ``front`` on host 2, agent ``back`` and the REST bridge on host 3; every member binds
``0.0.0.0`` and is dialled by its DNS name from the mesh file. A client on host 1 calls the bridge, which
calls front, which calls back: the workflow crosses every host.

Needs ``ip netns`` (root or CAP_NET_ADMIN); skipped, with that reason, where it is not permitted (never
where it is: under CI=true this test runs). Marked slow (~20 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from upkit import Bridge, env, wait_until, write_up_mesh

from agentmesh.pki import CertificateAuthority, write_identity

REPO = Path(__file__).resolve().parents[2]
SUBNET = "10.213.7"
HOSTS = {"h1": f"{SUBNET}.1", "h2": f"{SUBNET}.2", "h3": f"{SUBNET}.3"}
NAMES = {"control": "h1", "front": "h2", "back": "h3", "bridge": "h3"}
DOMAIN = "mesh.test"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def _netns_permitted() -> str | None:
    """None when this process may create network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "ip (iproute2) not installed"
    probe = f"amprobe{uuid.uuid4().hex[:6]}"
    done = _ip("netns", "add", probe)
    if done.returncode != 0:
        return f"ip netns not permitted here: {done.stderr.strip() or done.returncode}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def hosts() -> Iterator[dict[str, str]]:
    """Three namespaces (name -> its namespace) on one bridge, each with a hosts file naming every member."""
    why = _netns_permitted()
    if why is not None:
        pytest.skip(why)
    tag = uuid.uuid4().hex[:5]
    ns = {h: f"am{tag}{h}" for h in HOSTS}
    hub, bridge = f"am{tag}hub", f"ambr{tag}"
    hosts_text = "127.0.0.1 localhost\n" + "".join(f"{HOSTS[h]} {name}.{DOMAIN}\n" for name, h in NAMES.items())
    try:
        for cmd in (["netns", "add", hub], ["-n", hub, "link", "add", bridge, "type", "bridge"],
                    ["-n", hub, "link", "set", bridge, "up"], ["-n", hub, "link", "set", "lo", "up"]):
            assert _ip(*cmd).returncode == 0, cmd
        for i, (h, name) in enumerate(ns.items()):
            etc = Path("/etc/netns") / name
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_text)
            veth, peer = f"am{tag}v{i}", f"am{tag}p{i}"
            for cmd in (["netns", "add", name],
                        ["-n", hub, "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", name],
                        ["-n", hub, "link", "set", veth, "master", bridge], ["-n", hub, "link", "set", veth, "up"],
                        ["-n", name, "addr", "add", f"{HOSTS[h]}/24", "dev", peer],
                        ["-n", name, "link", "set", peer, "up"], ["-n", name, "link", "set", "lo", "up"]):
                done = _ip(*cmd)
                assert done.returncode == 0, (cmd, done.stderr)
        yield ns
    finally:
        for name in [*ns.values(), hub]:
            _ip("netns", "del", name)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


def _in(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


@pytest.mark.slow  # ~20 s: runs under CI=true (where ip netns is permitted) or AGENTMESH_SLOW=1
def test_the_workflow_crosses_three_hosts(tmp_path: Path, hosts: dict[str, str]) -> None:
    path = write_up_mesh(tmp_path, agents=("front", "back"))
    doc = yaml.safe_load(path.read_text())
    ports = {"control": 7100, "front": 7101, "back": 7102}
    doc["control"] = {"address": f"control.{DOMAIN}:7100", "listen": "0.0.0.0:7100"}
    for name in ("front", "back"):
        doc["agents"][name].update(address=f"{name}.{DOMAIN}:{ports[name]}", listen=f"0.0.0.0:{ports[name]}")
    doc["bridge"] = {"listen": "0.0.0.0:8443", "tls": True, "public_url": f"https://bridge.{DOMAIN}:8443"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    ca = CertificateAuthority.load(tmp_path / "ca")  # the bridge's certificate names the host its clients use
    write_identity(ca.issue("bridge", dns=[f"bridge.{DOMAIN}"]), tmp_path / "identities" / "bridge")

    py = [sys.executable, "-m", "agentmesh.cli.main"]
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "wb") as out:  # the child keeps its own descriptor
            procs.append(subprocess.Popen(_in(hosts[NAMES[name]], *py, *args, "--config", str(path)), stdout=out,
                                          stderr=subprocess.STDOUT, cwd=REPO, env=env()))

    def healthy(name: str) -> bool:
        done = subprocess.run(_in(hosts[NAMES[name]], *py, "health", name, "--config", str(path), "--timeout", "1"),
                              capture_output=True, text=True, cwd=REPO, env=env(), timeout=20)
        return done.returncode == 0

    def output() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(logs.glob("*.log")))

    try:
        start("control", "control")
        wait_until(lambda: healthy("control"), 30, f"control on h1\n{output()}")
        start("back", "agent", "back")
        start("front", "agent", "front")
        wait_until(lambda: healthy("back") and healthy("front"), 30, f"agents on h2, h3\n{output()}")
        start("bridge", "bridge")
        wait_until(lambda: healthy("bridge"), 30, f"bridge on h3\n{output()}")

        client = Bridge(path)
        script = (
            "import httpx, json, ssl, sys\n"
            "a = json.loads(sys.argv[1])\n"
            "r = httpx.post(a['url'], json=a['task'], headers={'Authorization': 'Bearer ' + a['token']},\n"
            "               verify=ssl.create_default_context(cafile=a['ca']), timeout=30)\n"
            "print(json.dumps({'status': r.status_code, 'body': r.text}))\n"
        )
        request = {"url": f"https://bridge.{DOMAIN}:8443/v1/agents/front/agentmesh.v1.Agent/Invoke",
                   "task": Bridge.task(("front", "back")), "token": client.token, "ca": client.verify}
        done = subprocess.run(_in(hosts["h1"], sys.executable, "-c", script, json.dumps(request)),
                              capture_output=True, text=True, timeout=60, env=env())
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["status"] == 200, (answer, output())
        assert [p["text"] for p in json.loads(answer["body"])["output"]] == ["front", "back"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
