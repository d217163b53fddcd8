"""``agentmesh up`` as a real process for the supervision tests: a mesh directory (CA, identities, mesh.yaml
on free ports), the ``up`` process with its output read line by line, and an HTTPS client of its bridge."""

from __future__ import annotations

import itertools
import os
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from meshkit import free_port
from support import TD

from agentmesh.configfile import load_config
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.runtime.runlogs import latest_run, read_state
from agentmesh.tokens import TokenAuthority

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
AGENTS = ("front", "middle", "back")


def write_up_mesh(root: Path, *, agents: Sequence[str] = AGENTS, grace: str = "5s", metrics: bool = False,
                  **sections: Any) -> Path:
    """A CA, identities and mesh.yaml: control plane, ``agents`` (each a :class:`upapps.Hop`, calling the
    next one in turn: front -> middle -> back), the bridge; every port free; ``grace_period`` = ``grace``;
    with ``metrics``, each member's metrics endpoint on a free port."""
    ca = CertificateAuthority.init(root / "ca", TD)
    for name in [*agents, "control", "bridge"]:
        write_identity(ca.issue(name, dns=["localhost"] if name == "bridge" else ()), root / "identities" / name)
    invoke = ["/agentmesh.v1.Agent/Invoke"]
    policy = [{"name": "client-to-first", "action": "allow", "to": [agents[0]], "methods": invoke,
               "roles": ["client"], "via": ["bridge"]}]
    for caller, callee in itertools.pairwise(agents):
        policy.append({"name": f"{caller}-to-{callee}", "action": "allow", "to": [callee], "methods": invoke,
                       "roles": ["client"], "via": [caller]})
    doc: dict[str, Any] = {
        "trust_domain": TD, "ca": "ca", "identities": "identities", "grace_period": grace,
        "control": {"address": f"127.0.0.1:{free_port()}"},
        "agents": {n: {"address": f"127.0.0.1:{free_port()}", "app": "upapps:Hop", "roles": [n]} for n in agents},
        "policy": policy,
        "audit": {"exporters": []},
        "bridge": {"listen": f"127.0.0.1:{free_port()}", "tls": True},
        **sections,
    }
    if metrics:
        doc["metrics"] = {"addresses": {n: f"127.0.0.1:{free_port()}" for n in ["control", *agents, "bridge"]}}
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), **extra}


def cli(*args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentmesh.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env=kw.pop("env", env()), timeout=timeout, **kw)


class Up:
    """A running ``agentmesh up CONFIG``: its output lines arrive on a queue (stdout and stderr merged)."""

    def __init__(self, config: Path, *args: str, extra_env: dict[str, str] | None = None) -> None:
        self.config = config
        self.proc = subprocess.Popen([sys.executable, "-m", "agentmesh.cli.main", "up", str(config), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                     env=env(**(extra_env or {})))
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first line (from now on) that satisfies ``predicate``; fails with everything read so far."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(left, 0.01))
            except queue.Empty:
                if left <= 0:
                    raise AssertionError(f"no such line within {timeout:.0f}s; output:\n{self.output()}") from None
                continue
            if line is None:
                self._queue.put(None)
                raise AssertionError(f"up exited ({self.proc.poll()}); output:\n{self.output()}")
            self.lines.append(line)
            if predicate(line):
                return line

    def wait_up(self, timeout: float = 30.0) -> None:
        self.wait_for(lambda line: line.startswith("mesh up"), timeout)

    def finish(self, timeout: float = 30.0) -> int:
        """Waits for ``up`` to exit and collects the rest of its output."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.finish(timeout)

    def close(self) -> None:
        """Ends ``up`` and every process it started, whatever state the test left them in."""
        kids = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in kids:
            kill_quietly(pid)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def output(self) -> str:
        return "\n".join(self.lines)


class Bridge:
    """An HTTPS client of the mesh's bridge, with a client token."""

    def __init__(self, config_path: Path) -> None:
        config = load_config(config_path)
        authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
        self.token = authority.issue(sub="alice@example.org", roles=["client"], audience=config.tokens.audience,
                                     ttl=600)
        port = config.bridge.listen.rpartition(":")[2]
        self.url = f"https://localhost:{port}"
        self.verify = str(config.identity_dir("bridge") / "bundle.pem")

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=ssl.create_default_context(cafile=self.verify),
                                 timeout=timeout,
                                 headers={"Authorization": f"Bearer {self.token}"})

    @staticmethod
    def task(agents: Sequence[str] = AGENTS, task_id: str = "t", **metadata: str) -> dict[str, Any]:
        return {"id": task_id, "input": [{"text": "hello"}],
                "metadata": {"next": ",".join(agents[1:]), **metadata}}

    async def invoke(self, client: httpx.AsyncClient, agents: Sequence[str] = AGENTS, task_id: str = "t",
                     **metadata: str) -> httpx.Response:
        """POST Invoke to ``agents[0]``, which calls the rest in turn (see :class:`upapps.Hop` for
        ``metadata``)."""
        return await client.post(f"/v1/agents/{agents[0]}/agentmesh.v1.Agent/Invoke",
                                 json=self.task(agents, task_id, **metadata))


def child_pids(root: Path) -> dict[str, int]:
    """Each child's pid, as ``up`` recorded it in its latest run (``root/logs/latest/run.json``)."""
    run = latest_run(root / "logs")
    state = read_state(run) if run is not None else {}
    return {c["name"]: c["pid"] for c in state.get("children", []) if c.get("pid")}


def descendants(pid: int) -> list[int]:
    """Every process whose parent chain leads to ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    out, frontier = [], {pid}
    while frontier:
        kids = {p for p, pp in parents.items() if pp in frontier}
        out.extend(kids)
        frontier = kids
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    """Polls ``predicate`` (bounded): the tests wait for conditions, never for time to pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:.0f}s")
        time.sleep(0.02)
