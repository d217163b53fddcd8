"""Members bind ``listen`` while others dial ``address`` (issue 14), and ``agentmesh health`` answers for
one member as a kubelet exec probe would ask it: beside the member, as the member."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from meshkit import free_port
from support import TD
from upkit import Bridge, Up, cli, write_up_mesh

from agentmesh.config import AgentConfig, ControlConfig
from agentmesh.configfile import parse_config
from agentmesh.errors import ConfigError


def _doc(**agent: object) -> dict[str, object]:
    return {"trust_domain": TD, "agents": {"a": {"address": "a.agents.svc:7101", **agent}}}


def test_listen_defaults_to_address_and_follows_it(tmp_path: Path) -> None:
    config = parse_config(_doc(), tmp_path)
    agent = config.agents["a"]
    assert agent.listen is None and agent.bind_address == "a.agents.svc:7101"
    assert config.control.bind_address == config.control.address and config.control.join_bind_address is None
    import dataclasses

    moved = dataclasses.replace(agent, address="10.0.0.9:7200")  # a default follows a replaced address
    assert moved.bind_address == "10.0.0.9:7200"


def test_listen_is_parsed_and_checked(tmp_path: Path) -> None:
    doc = _doc(listen="0.0.0.0:7101")
    doc["control"] = {"address": "control.agents.svc:7100", "listen": "0.0.0.0:7100",
                      "join_address": "control.agents.svc:7099", "join_listen": "0.0.0.0:7099"}
    config = parse_config(doc, tmp_path)
    assert config.agents["a"].bind_address == "0.0.0.0:7101"
    assert config.agents["a"].address == "a.agents.svc:7101"  # still what others dial
    assert config.control.bind_address == "0.0.0.0:7100" and config.control.join_bind_address == "0.0.0.0:7099"
    with pytest.raises(ConfigError, match=r"agents\.a\.listen: expected host:port, got '7101'"):
        parse_config(_doc(listen="7101"), tmp_path)
    with pytest.raises(ConfigError, match=r"agents\.a\.lsten: unknown key \(did you mean 'listen'\?\)"):
        parse_config(_doc(lsten="0.0.0.0:7101"), tmp_path)
    with pytest.raises(ConfigError, match=r"control\.listen: expected host:port"):
        ControlConfig(listen="nowhere")
    with pytest.raises(ConfigError, match=r"control\.join_listen: set join_address too"):
        ControlConfig(join_listen="0.0.0.0:7099")
    with pytest.raises(ConfigError, match=r"agents\.b\.listen"):
        AgentConfig(name="b", address="b:1", identity_dir=tmp_path, listen="b:")


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(host)
    return found


def _bind_everywhere(path: Path) -> dict[str, int]:
    """Rewrites mesh.yaml: every agent and the control plane listen on 0.0.0.0 and are dialled as localhost."""
    doc = yaml.safe_load(path.read_text())
    ports = {}
    for section in [doc["control"], *doc["agents"].values()]:
        port = free_port()
        section["address"], section["listen"] = f"localhost:{port}", f"0.0.0.0:{port}"
        ports[section.get("app", "control")] = port
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return ports


@pytest.mark.slow  # real `up` processes, several seconds: CI runs it (make test stays under 5 min)
def test_members_bind_listen_and_are_reached_by_name(tmp_path: Path) -> None:
    config = write_up_mesh(tmp_path)
    ports = _bind_everywhere(config)
    up = Up(config)
    try:
        up.wait_up()
        for port in ports.values():  # bound on every address (not the name others dial)
            assert any(set(host) == {"0"} for host in _listening(port)), port  # 0.0.0.0 or [::] (dual stack)

        async def workflow() -> None:
            bridge = Bridge(config)
            async with bridge.client() as client:
                res = await bridge.invoke(client)
            assert res.status_code == 200, res.text
            assert [p["text"] for p in res.json()["output"]] == ["front", "middle", "back"]

        asyncio.run(workflow())  # the bridge dialled front, front middle, middle back: all by localhost

        for name in ("control", "front", "back", "bridge"):  # as a pod's exec probe asks: as itself, locally
            done = cli("health", name, "--config", str(config))
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip().endswith(": SERVING") or done.stdout.strip().endswith(": ready"), done.stdout
        done = cli("health", "middle", "--config", str(config), "--as", "control",
                   "--address", yaml.safe_load(config.read_text())["agents"]["middle"]["address"])
        assert done.returncode == 0, done.stderr
    finally:
        up.close()
    down = cli("health", "front", "--config", str(config), "--timeout", "0.5")
    assert down.returncode == 2
    assert down.stderr.count("\n") == 1 and "agentmesh: error: agent front at 127.0.0.1:" in down.stderr, down.stderr
    assert "unreachable" in down.stderr


def test_health_refuses_unknown_members_and_missing_identities(tmp_path: Path) -> None:
    config = write_up_mesh(tmp_path)
    done = cli("health", "fornt", "--config", str(config))
    assert done.returncode == 2 and "unknown member 'fornt' (did you mean 'front'?)" in done.stderr, done.stderr
    done = cli("health", "front", "--config", str(config), "--as", "nobody")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "nobody" in done.stderr
