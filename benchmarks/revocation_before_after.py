"""Revocation, before and after the identity lifecycle: what still works once a member is revoked.

    .venv/bin/python benchmarks/revocation_before_after.py                       # this tree
    git worktree add /tmp/before 6f4e41d
    .venv/bin/python benchmarks/revocation_before_after.py --tree /tmp/before    # the code before

A mesh of real processes: the control plane (``agentmesh control``), an ``ingestor`` agent and a
``caller`` member. Each member serves a handler that holds streams open, holds one server stream open
to the other (with a 1 h deadline, as a long-lived stream has), and makes a call to the other every
``--interval`` s. The members' config points ``ca`` at a directory WITHOUT the CA (what the README
advises: agents get only cert.pem, key.pem and bundle.pem); only the control plane's config names the
CA. Each tree runs with its own defaults otherwise (max_connection_age, revocation). After a few
seconds of traffic the operator revokes the ingestor with ``agentmesh cert revoke ingestor --ca DIR``;
for ``--seconds`` after that we count the calls to and from the revoked ingestor that still succeed,
and wait up to ``--cap`` s for each of the two streams (the caller's to the ingestor, the ingestor's
to the caller) to be cut.

Self-contained on purpose (agentmesh, grpc and yaml only, imported late): it re-runs itself with
``PYTHONPATH=--tree`` so every process, the CLI included, runs that tree's agentmesh, whatever its
API (``start_control`` returned ``(server, sink)`` before the lifecycle work).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_TREE_ENV = "AGENTMESH_BEFORE_AFTER_TREE"
if __name__ == "__main__":  # run as a file: never let benchmarks/ (profile.py, ...) shadow a module
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

TRUST_DOMAIN = "before-after.example.org"
REVOKED = "ingestor"
CALLER = "caller"
TARGET = {CALLER: REVOKED, REVOKED: CALLER}  # each member calls, and holds a stream open to, the other
#: a long-lived stream's deadline (the old tree's client chain gave every call bridge.default_timeout, 30 s)
STREAM_DEADLINE = 3600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


# ----------------------------------------------------------------------------- a member process


async def _member(config_path: str, name: str, interval: float) -> None:
    import grpc

    from agentmesh.configfile import load_config
    from agentmesh.runtime.node import MeshNode
    from agentmesh.v1 import agent_pb2, agent_pb2_grpc

    class Holding(agent_pb2_grpc.AgentServicer):
        async def Invoke(self, request: Any, context: Any) -> Any:
            return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED)

        async def InvokeStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
            yield agent_pb2.TaskEvent(task_id=request.id, progress="open")
            await asyncio.Event().wait()  # open until something ends it

        async def Describe(self, request: Any, context: Any) -> Any:
            return agent_pb2.AgentCard(name=name)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    node = MeshNode(load_config(config_path), name)
    await node.start()
    server = node.server()
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, Holding(), "agentmesh.v1.Agent")
    await server.start(node.address)
    target = TARGET[name]
    task = agent_pb2.Task(id=f"from-{name}", input=[agent_pb2.Part(text="hello")])

    opened = asyncio.Event()

    async def hold() -> None:
        deadline = time.monotonic() + 60
        while True:  # until the other member listens
            stream = node.stub(target, agent_pb2_grpc.AgentStub).InvokeStream(task, timeout=STREAM_DEADLINE)
            try:
                await stream.read()
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        _emit({"ev": "stream_open", "t": time.time()})
        opened.set()
        code = "EOF"
        try:
            while await stream.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as e:
            code = f"{e.code().name}: {e.details()}"
        except asyncio.CancelledError:  # grpc.aio's way to end a call whose channel was closed under it
            if (me := asyncio.current_task()) is not None and me.cancelling():
                raise  # this member is stopping
            code = "CANCELLED: its channel was closed"
        _emit({"ev": "stream_end", "t": time.time(), "code": code})

    async def calls() -> None:
        while True:
            t0 = time.time()
            try:
                await node.stub(target, agent_pb2_grpc.AgentStub).Invoke(task, timeout=5)
                _emit({"ev": "call", "t": t0, "ok": True})
            except Exception as e:  # a refusal of either side, in whatever form, is a failed call
                code = e.code().name if isinstance(e, grpc.aio.AioRpcError) else type(e).__name__
                _emit({"ev": "call", "t": t0, "ok": False, "code": code})
            await asyncio.sleep(max(0.0, interval - (time.time() - t0)))

    holder = asyncio.ensure_future(hold())
    waits = [asyncio.ensure_future(opened.wait()), asyncio.ensure_future(stopping.wait())]
    await asyncio.wait([holder, *waits], return_when=asyncio.FIRST_COMPLETED)
    if holder.done() and not opened.is_set():
        holder.result()  # it failed: say why
    caller = asyncio.ensure_future(calls())  # calls start once this member holds its stream
    await stopping.wait()
    for t in (holder, caller, *waits):
        t.cancel()
    await server.stop(0)
    await node.close()


# ----------------------------------------------------------------------------- the orchestrator


def _mesh(root: Path, *, members_read_ca: bool) -> tuple[Path, Path, dict[str, str]]:
    """CA, identities, the control plane's config and the members' config (whose ``ca`` holds no CA,
    unless ``members_read_ca``)."""
    import yaml

    from agentmesh.pki import CertificateAuthority, write_identity

    ca = CertificateAuthority.init(root / "ca", TRUST_DOMAIN)
    for name in ("control", REVOKED, CALLER):
        write_identity(ca.issue(name), root / "identities" / name)
    (root / "member-ca").mkdir()  # what an agent has: no CA, no crl.pem
    addresses = {name: f"127.0.0.1:{_free_port()}" for name in ("control", REVOKED, CALLER)}
    doc: dict[str, Any] = {
        "trust_domain": TRUST_DOMAIN,
        "identities": str(root / "identities"),
        "control": {"address": addresses["control"]},
        "agents": {REVOKED: {"address": addresses[REVOKED], "roles": ["worker"]},
                   CALLER: {"address": addresses[CALLER], "roles": ["worker"]}},
        "policy": [{"name": f"{a}-to-{b}", "action": "allow", "to": [b], "from": [a],
                    "methods": ["/agentmesh.v1.Agent/*"]} for a, b in TARGET.items()],
        "audit": {"exporters": ["jsonl"], "jsonl_path": str(root / "audit.jsonl")},
        "grace_period": "1s",
    }
    control_cfg, member_cfg = root / "control.yaml", root / "member.yaml"
    control_cfg.write_text(yaml.safe_dump({**doc, "ca": str(root / "ca")}))
    member_cfg.write_text(yaml.safe_dump({**doc, "ca": str(root / ("ca" if members_read_ca else "member-ca"))}))
    return control_cfg, member_cfg, addresses


class _Proc:
    """A child process whose stdout JSON lines are collected (stderr goes to a log file)."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, cwd: Path) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as err:
            self.popen = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=err, cwd=cwd, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def wait_for(self, ev: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if e.get("ev") == ev:
                    return e
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name}: no {ev!r} within {timeout:.0f} s:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _wait_listening(address: str, proc: _Proc, timeout: float = 60) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} does not listen on {address}")


def _calls(events: list[dict[str, Any]], revoked_at: float, seconds: float, bound: float) -> dict[str, Any]:
    calls = [e for e in events if e.get("ev") == "call"]
    before = [e for e in calls if e["t"] < revoked_at]
    after = [e for e in calls if revoked_at <= e["t"] < revoked_at + seconds]
    ok = [e for e in after if e["ok"]]
    codes: dict[str, int] = {}
    for e in after:
        if not e["ok"]:
            codes[e["code"]] = codes.get(e["code"], 0) + 1
    refused = [e for e in after if not e["ok"]]
    return {
        "before_revocation": {"calls": len(before), "ok": sum(e["ok"] for e in before)},
        "after_revocation": len(after),
        "succeeded_after_revocation": len(ok),
        f"succeeded_later_than_{bound:g}_s": sum(e["t"] >= revoked_at + bound for e in ok),
        "last_success_after_s": round(max(e["t"] for e in ok) - revoked_at, 3) if ok else None,
        "first_failure_after_s": round(refused[0]["t"] - revoked_at, 3) if refused else None,
        "failure_codes": codes,
    }


def _stream(events: list[dict[str, Any]], revoked_at: float, cap: float) -> dict[str, Any]:
    end = next((e for e in events if e.get("ev") == "stream_end"), None)
    if end is None or end["t"] - revoked_at > cap:
        return {"cut_after_s": None, "shown": f">{cap:g} s", "code": None}
    return {"cut_after_s": round(end["t"] - revoked_at, 3), "shown": f"{end['t'] - revoked_at:.2f} s",
            "code": end["code"]}


def run(tree: Path, *, seconds: float, cap: float, interval: float, warmup: float, bound: float,
        members_read_ca: bool = False) -> dict[str, Any]:
    import agentmesh
    from agentmesh.configfile import load_config
    from agentmesh.pki import CertificateAuthority

    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    root = Path(tempfile.mkdtemp(prefix="agentmesh-before-after-"))
    control_cfg, member_cfg, addresses = _mesh(root, members_read_ca=members_read_ca)
    member_config = load_config(member_cfg)
    logs = root / "logs"
    logs.mkdir()
    me = [sys.executable, str(Path(__file__).resolve())]
    procs: list[_Proc] = []
    try:
        control = _Proc("control", [sys.executable, "-m", "agentmesh.cli.main", "control", "--config",
                                    str(control_cfg)], logs, tree)
        procs.append(control)
        _wait_listening(addresses["control"], control)
        members = {name: _Proc(name, [*me, "member", "--config", str(member_cfg), "--name", name, "--interval",
                                      str(interval)], logs, tree) for name in (REVOKED, CALLER)}
        procs.extend(members.values())
        for m in members.values():
            m.wait_for("stream_open", 90)
        time.sleep(warmup)  # calls in both directions meanwhile
        done = subprocess.run([sys.executable, "-m", "agentmesh.cli.main", "cert", "revoke", REVOKED, "--ca",
                               str(root / "ca")], cwd=tree, capture_output=True, text=True, timeout=60)
        returned = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"cert revoke failed: {done.stderr}")
        entry = next(e for e in CertificateAuthority.load(root / "ca").entries() if e.name == REVOKED)
        revoked_at = entry.revoked_at or returned
        deadline = revoked_at + max(seconds, cap)
        while time.time() < deadline:  # the calls for ``seconds``; the streams until cut or ``cap``
            cut = all(any(e.get("ev") == "stream_end" for e in m.events) for m in members.values())
            if cut and time.time() > revoked_at + seconds:
                break
            time.sleep(0.1)
    finally:
        for p in reversed(procs):
            p.stop()
    return {
        "tree": str(tree),
        "commit": commit + ("+local changes" if dirty else ""),
        "agentmesh": str(Path(agentmesh.__file__).parent),
        "member_ca_dir_has_ca": (member_config.ca_dir / "ca.json").exists(),
        "max_connection_age_s": member_config.max_connection_age,
        "revocation": f"agentmesh cert revoke {REVOKED} --ca DIR",
        "revoke_command_returned_after_s": round(returned - revoked_at, 3),
        "seconds": seconds,
        "cap_s": cap,
        "call_interval_s": interval,
        "calls_to_revoked": _calls(members[CALLER].events, revoked_at, seconds, bound),
        "calls_from_revoked": _calls(members[REVOKED].events, revoked_at, seconds, bound),
        "stream_to_revoked": _stream(members[CALLER].events, revoked_at, cap),
        "stream_from_revoked": _stream(members[REVOKED].events, revoked_at, cap),
        "logs": str(logs),
    }


def _print(r: dict[str, Any], bound: float) -> None:
    print(f"tree {r['tree']} ({r['commit']}), agentmesh from {r['agentmesh']}; members' ca dir holds a CA: "
          f"{r['member_ca_dir_has_ca']}; max_connection_age {r['max_connection_age_s']:g} s")
    for key, label in (("calls_to_revoked", "calls TO the revoked ingestor"),
                       ("calls_from_revoked", "calls FROM the revoked ingestor")):
        c = r[key]
        print(f"  {label}: {c['succeeded_after_revocation']} of {c['after_revocation']} succeeded in the "
              f"{r['seconds']:g} s after revocation ({c[f'succeeded_later_than_{bound:g}_s']} later than "
              f"{bound:g} s; last success {c['last_success_after_s']} s after; before it: "
              f"{c['before_revocation']['ok']} of {c['before_revocation']['calls']} OK; failures {c['failure_codes']})")
    for key, label in (("stream_to_revoked", "stream caller -> revoked ingestor"),
                       ("stream_from_revoked", "stream revoked ingestor -> caller")):
        s = r[key]
        print(f"  {label}: cut after {s['shown']}" + (f" ({s['code']})" if s["code"] else ""))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["member"]:
        m = argparse.ArgumentParser()
        m.add_argument("role")
        m.add_argument("--config", required=True)
        m.add_argument("--name", required=True)
        m.add_argument("--interval", type=float, required=True)
        ma = m.parse_args(argv)
        asyncio.run(_member(ma.config, ma.name, ma.interval))
        return 0
    p = argparse.ArgumentParser(prog="revocation_before_after.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, default=REPO, help="the agentmesh source tree to run (default: this one)")
    p.add_argument("--seconds", type=float, default=20.0, help="calls counted for this long after the revocation")
    p.add_argument("--cap", type=float, default=30.0, help="wait at most this long for a stream to be cut")
    p.add_argument("--interval", type=float, default=0.03, help="one call every this many seconds, per member")
    p.add_argument("--warmup", type=float, default=3.0, help="traffic before the revocation, s")
    p.add_argument("--bound", type=float, default=2.0, help="the propagation bound the 'later than' count uses")
    p.add_argument("--members-read-ca", action="store_true",
                   help="point the members' ca at the CA itself (they read its crl.pem), against the advice")
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)
    tree = a.tree.resolve()
    if os.environ.get(_TREE_ENV) != str(tree):  # run again with that tree's agentmesh first on the path
        env = {**os.environ, "PYTHONPATH": str(tree), _TREE_ENV: str(tree)}
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv], env=env)
    result = run(tree, seconds=a.seconds, cap=a.cap, interval=a.interval, warmup=a.warmup, bound=a.bound,
                 members_read_ca=a.members_read_ca)
    _print(result, a.bound)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
