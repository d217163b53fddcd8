"""Delegation, before and after verifiable delegation (issue 10): what a compromised middle agent can do.

    .venv/bin/python benchmarks/delegation_before_after.py                          # the agentmesh importable
    git worktree add /tmp/before 99a6d99
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/delegation_before_after.py   # the code before
    .venv/bin/python benchmarks/delegation_before_after.py --tree /tmp/before       # the same, re-run for you

One process, real sockets: a CA, the control plane (``start_control``), a ``MeshNode`` per member and
the REST bridge (the tree's ``create_app`` with the bridge node, under uvicorn over HTTPS, as
``tests/bridge/bridgekit.py`` runs it). The agents ``ingestor``, ``summarizer`` and ``validator`` relay
a task to the next one named in ``task.metadata["next"]``; the policy (the same in both trees) allows
role ``client`` to the ingestor via the bridge, to the summarizer via the ingestor and to the validator
via the summarizer. The summarizer is compromised: its servicer is attacker code. Each phase runs the
workflow ``POST /v1/agents/ingestor/agentmesh.v1.Agent/Invoke`` (bridge -> ingestor -> summarizer ->
validator) ``--n`` times, each with a fresh client JWT:

1. honest: the summarizer forwards as it should, and records its invocation metadata: is the
   client's JWT in any value?
2. replay: after each honest workflow, everything the summarizer held that looks like a token
   (every JWS in its metadata, ``txn-links`` split, and its own token) is presented as
   ``Authorization: Bearer`` at the bridge (``POST .../ingestor/...Invoke``): accepted = HTTP 200.
3. invented hop: the summarizer calls the validator claiming an earlier actor that does not exist
   (``spiffe://<td>/agent/ghost``). Before: ``delegating(subject_token, actors=(bridge, ingestor,
   ghost))``, the API as it was. After: the links it received plus a link naming the ghost that the
   summarizer signs with its own certificate key (``sign_link``), set as the call's delegation; the
   client chain appends the summarizer's own (genuine) link.
4. dropped hop: the summarizer calls the validator with the ingestor left out. Before:
   ``delegating(subject_token, actors=(bridge,))``. After: only the bridge's link, then its own.

A control phase runs before 3 and 4: the summarizer calls the validator through the same attack code
path (the same ``delegating``/contextvar) with the true chain, which must be accepted, so a refusal
in 3 or 4 is the forgery's, not the harness's. For 3 and 4 the validator's ``current_call()``
(principal, chain/actors) is recorded when the call reaches it, and the audit JSONL's server spans
of the validator for that phase are summarised.
The tree is detected by feature (``hasattr(MeshNode, "exchange")``), never by commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_TREE_ENV = "AGENTMESH_BEFORE_AFTER_TREE"
if __name__ == "__main__":  # run as a file: never let benchmarks/ (profile.py, ...) shadow a module
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

TD = "delegation-before-after.example.org"
AGENTS = ("ingestor", "summarizer", "validator")
AGENT_MODULE = "agentmesh.v1.agent_pb2"
WORKFLOW = "/v1/agents/ingestor/agentmesh.v1.Agent/Invoke"
GHOST = "ghost"
_JWS = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sid(name: str) -> str:
    return f"spiffe://{TD}/agent/{name}"


def _looks_like_jws(value: str) -> bool:
    return _JWS.fullmatch(value) is not None


# ----------------------------------------------------------------------------- the mesh


def _write_mesh(root: Path) -> Path:
    import yaml

    from agentmesh.pki import CertificateAuthority, write_identity

    ca = CertificateAuthority.init(root / "ca", TD)
    for name in (*AGENTS, "bridge", "control"):
        write_identity(ca.issue(name, dns=["localhost"] if name == "bridge" else ()), root / "identities" / name)
    methods = ["/agentmesh.v1.Agent/*"]
    doc: dict[str, Any] = {
        "trust_domain": TD,
        "ca": str(root / "ca"),
        "identities": str(root / "identities"),
        "agents": {n: {"address": f"127.0.0.1:{_free_port()}", "roles": [n], "descriptors": [AGENT_MODULE]}
                   for n in AGENTS},
        "control": {"address": f"127.0.0.1:{_free_port()}"},
        "audit": {"exporters": ["jsonl"], "jsonl_path": str(root / "audit.jsonl")},
        "policy": [
            {"name": "clients-to-ingestor-via-bridge", "action": "allow", "roles": ["client"], "to": ["ingestor"],
             "via": ["bridge"], "methods": methods},
            {"name": "clients-to-summarizer-via-ingestor", "action": "allow", "roles": ["client"],
             "to": ["summarizer"], "via": ["ingestor"], "methods": methods},
            {"name": "clients-to-validator-via-summarizer", "action": "allow", "roles": ["client"],
             "to": ["validator"], "via": ["summarizer"], "methods": methods},
        ],
    }
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Lab:
    """What the agents saw and did, per phase."""

    def __init__(self, new_api: bool) -> None:
        self.new_api = new_api
        self.phase = "honest"
        self.seen: dict[str, list[dict[str, Any]]] = {n: [] for n in AGENTS}
        self.attacks: list[dict[str, Any]] = []

    def chain_of(self, call: Any) -> list[str]:
        return list(call.chain if self.new_api else call.actors)


def _relay(node: Any, lab: Lab) -> Any:
    from agentmesh.context import current_call
    from agentmesh.v1 import agent_pb2, agent_pb2_grpc

    class Relay(agent_pb2_grpc.AgentServicer):
        async def Invoke(self, request: Any, context: Any) -> Any:
            call = current_call()
            md = [(k, v) for k, v in context.invocation_metadata() if isinstance(v, str)]
            lab.seen[node.name].append({"phase": lab.phase, "task": request.id, "metadata": md,
                                        "principal": call.principal, "peer": call.peer_spiffe_id,
                                        "chain": lab.chain_of(call)})
            out = [agent_pb2.Part(text=f"{node.name} for {call.principal}")]
            if node.name == "summarizer" and lab.phase != "honest":
                lab.attacks.append(await _attack(node, lab, md, request.id))
                return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED, output=out)
            nxt = [n for n in request.metadata.get("next", "").split(",") if n]
            if nxt:
                onward = agent_pb2.Task(id=request.id, input=request.input, metadata={"next": ",".join(nxt[1:])})
                res = await node.stub(nxt[0], agent_pb2_grpc.AgentStub).Invoke(onward)
                out.extend(res.output)
            return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED, output=out)

    return Relay()


def _md(md: Sequence[tuple[str, str]], key: str) -> str | None:
    return next((v for k, v in md if k == key), None)


async def _attack(node: Any, lab: Lab, md: Sequence[tuple[str, str]], task_id: str) -> dict[str, Any]:
    """The compromised summarizer calls the validator with an invented or a dropped hop."""
    import grpc

    from agentmesh.v1 import agent_pb2, agent_pb2_grpc

    task = agent_pb2.Task(id=f"{lab.phase}-{task_id}", input=[agent_pb2.Part(text="forged")])
    stub = node.stub("validator", agent_pb2_grpc.AgentStub)
    claimed: list[str]
    with contextlib.ExitStack() as stack:
        if not lab.new_api:
            from agentmesh.interceptors.client import delegating

            subject = _md(md, "x-agentmesh-subject-token")
            assert subject is not None, "the old tree forwards the subject token"
            actors = {"invent": (_sid("bridge"), _sid("ingestor"), _sid(GHOST)), "drop": (_sid("bridge"),),
                      "control": (_sid("bridge"), _sid("ingestor"))}[lab.phase]
            claimed = [*actors, str(node.spiffe_id)]
            stack.enter_context(delegating(subject, actors))
        else:
            from cryptography.hazmat.primitives import serialization

            from agentmesh.interceptors import client as client_chain
            from agentmesh.tokens.links import cert_der, sign_link
            from agentmesh.tokens.txn import token_hash

            txn = _md(md, "txn-token")
            links = tuple((_md(md, "txn-links") or "").split(","))
            assert txn is not None and len(links) == 2, "bridge and ingestor links expected"
            if lab.phase == "invent":  # a link "from the ghost" to the summarizer, signed with the summarizer's key
                files = node.identity.files
                key = serialization.load_pem_private_key(files.key, password=None)
                forged = sign_link(key, cert_der(files.leaf), signer=_sid(GHOST), aud=str(node.spiffe_id),
                                   tth=token_hash(txn), ph=token_hash(links[-1]), now=time.time(), ttl=60)
                sent = (*links, forged)
                claimed = [_sid("bridge"), _sid("ingestor"), _sid(GHOST), str(node.spiffe_id)]
            elif lab.phase == "drop":  # drop the ingestor: the bridge's link, then the summarizer's own
                sent = links[:1]
                claimed = [_sid("bridge"), str(node.spiffe_id)]
            else:  # control: the links as received, through the same injection path
                sent = links
                claimed = [_sid("bridge"), _sid("ingestor"), str(node.spiffe_id)]
            reset = client_chain._delegation.set(client_chain.Delegation(txn, sent))
            stack.callback(client_chain._delegation.reset, reset)
        try:
            await stub.Invoke(task, timeout=5)
            return {"phase": lab.phase, "task": task.id, "accepted": True, "claimed": claimed}
        except grpc.aio.AioRpcError as e:
            return {"phase": lab.phase, "task": task.id, "accepted": False, "claimed": claimed,
                    "code": e.code().name, "details": e.details()}
        except Exception as e:  # refused on this side (the client chain)
            return {"phase": lab.phase, "task": task.id, "accepted": False, "claimed": claimed,
                    "code": type(e).__name__, "details": str(e)}


@contextlib.asynccontextmanager
async def _serve_bridge(app: Any, config: Any) -> AsyncIterator[str]:
    import uvicorn

    from agentmesh.bridge.server import uvicorn_options

    port = _free_port()
    opts = uvicorn_options(config, listen=f"127.0.0.1:{port}")
    opts.pop("workers", None)
    opts["log_level"] = "warning"
    server = uvicorn.Server(uvicorn.Config(app, **opts))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"{'https' if 'ssl_certfile' in opts else 'http'}://localhost:{port}"
    finally:
        server.should_exit = True
        await task


def _audit_since(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    out = []
    for line in data.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out, offset + len(data)


def _validator_spans(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        attrs = r.get("attributes") or {}
        if r.get("kind") == "server" and attrs.get("agentmesh.agent") == "validator":
            out.append(r)
    return out


def _span_summary(r: dict[str, Any]) -> dict[str, Any]:
    attrs = r.get("attributes") or {}
    denied = [e for e in r.get("events") or () if e.get("name") == "agentmesh.denied"]
    d = (denied[0].get("attributes") or {}) if denied else {}
    return {
        "decision": attrs.get("agentmesh.decision"),
        # the status name (this tree), or its number (a tree of before the OpenTelemetry conventions v1.44)
        "grpc_status": attrs.get("rpc.response.status_code", attrs.get("rpc.grpc.status_code")),
        "principal": attrs.get("enduser.id"),
        "chain": attrs.get("agentmesh.delegation.chain"),
        "peer": attrs.get("agentmesh.peer.spiffe_id"),
        "rule": attrs.get("agentmesh.rule"),
        "denied_stage": d.get("stage"),
        "delegation_check": attrs.get("agentmesh.delegation.check"),
        "reason": d.get("reason"),
    }


def _tally(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct summaries with their counts."""
    counts = Counter(json.dumps(i, sort_keys=True) for i in items)
    return [{"count": n, **json.loads(k)} for k, n in counts.most_common()]


async def run(n: int) -> dict[str, Any]:
    import httpx

    import agentmesh
    from agentmesh.bridge import create_app
    from agentmesh.configfile import load_config
    from agentmesh.runtime.control import start_control
    from agentmesh.runtime.node import MeshNode
    from agentmesh.tokens import TokenAuthority
    from agentmesh.v1 import agent_pb2_grpc

    new_api = hasattr(MeshNode, "exchange")
    lab = Lab(new_api)
    root = Path(tempfile.mkdtemp(prefix="agentmesh-delegation-before-after-"))
    config = load_config(_write_mesh(root))
    audit_path = root / "audit.jsonl"
    control = await start_control(config)
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    nodes: dict[str, Any] = {}
    servers: list[Any] = []
    t0 = time.monotonic()
    result: dict[str, Any] = {"api": "transaction token + signed hop links (MeshNode.exchange)" if new_api
                              else "raw subject token + claimed actors (x-agentmesh-subject-token/-actors)",
                              "agentmesh": str(Path(agentmesh.__file__).parent), "n": n}

    def client_token(i: int) -> str:
        return authority.issue(sub=f"alice-{i}@example.org", roles=["client"], audience=config.tokens.audience,
                               ttl=600)

    def flush() -> None:
        for node in nodes.values():
            node.sink.force_flush(5)

    try:
        for name in AGENTS:
            node = nodes[name] = MeshNode(config, name, check_every=0)
            await node.start(timeout=10)
            server = node.server(grace=0.2)
            server.add(agent_pb2_grpc.add_AgentServicer_to_server, _relay(node, lab), "agentmesh.v1.Agent")
            await server.start(node.address)
            servers.append(server)
        bridge = nodes["bridge"] = MeshNode(config, "bridge", check_every=0)
        await bridge.start(timeout=10)
        app = create_app(config, node=bridge)
        tls = ssl.create_default_context(cafile=str(config.identity_dir("bridge") / "bundle.pem"))
        async with _serve_bridge(app, config) as url, httpx.AsyncClient(base_url=url, verify=tls,
                                                                        timeout=10) as http:
            async def workflow(i: int, jwt: str) -> httpx.Response:
                body = {"id": f"{lab.phase}-{i}", "input": [{"text": "a document"}],
                        "metadata": {"next": "summarizer,validator"}}
                return await http.post(WORKFLOW, json=body, headers={"Authorization": f"Bearer {jwt}"})

            offset = _audit_since(audit_path, 0)[1] if audit_path.exists() else 0
            # ---- 1 + 2: honest workflow, then replay what the summarizer held at the bridge
            lab.phase = "honest"
            honest_ok, seen_jwt, replay_ok = 0, 0, 0
            by_kind: dict[str, Counter[str]] = {}
            own = await nodes["summarizer"].tokens.token()
            for i in range(n):
                jwt = client_token(i)
                r = await workflow(i, jwt)
                reached = r.status_code == 200 and any("validator for" in p.get("text", "")
                                                       for p in r.json().get("output", []))
                honest_ok += reached
                rec = lab.seen["summarizer"][-1]
                seen_jwt += any(v == jwt or jwt in v for _, v in rec["metadata"])
                held: list[tuple[str, str]] = []
                for k, v in rec["metadata"]:
                    parts = v.split(",") if k == "txn-links" else [v.removeprefix("Bearer ")]
                    for j, part in enumerate(parts):
                        if _looks_like_jws(part):
                            held.append((f"{k}[{j}]" if k == "txn-links" else k, part))
                held.append(("summarizer's own token", own))
                accepted = False
                for kind, token in held:
                    rr = await http.post(WORKFLOW, json={"id": f"replay-{i}", "input": [{"text": "exfiltrate"}]},
                                         headers={"Authorization": f"Bearer {token}"})
                    ok = rr.status_code == 200
                    accepted |= ok
                    try:
                        why = rr.json().get("message") if not ok else None
                    except ValueError:
                        why = rr.text[:120]
                    by_kind.setdefault(kind, Counter())[f"HTTP {rr.status_code}" + (f" ({why})" if why else "")] += 1
                replay_ok += accepted
            flush()
            await asyncio.sleep(0.3)
            records, offset = _audit_since(audit_path, offset)
            honest_spans = [_span_summary(s) for s in _validator_spans(records)]
            hv = [s for s in lab.seen["validator"] if s["phase"] == "honest"]
            result["honest"] = {
                "workflow_reached_validator": honest_ok,
                "summarizer_metadata_keys": sorted({k for k, _ in lab.seen["summarizer"][-1]["metadata"]}),
                "client_jwt_seen_by_summarizer": seen_jwt,
                "validator_current_call": _tally([{"principal_is_client": s["principal"].startswith("alice-"),
                                                   "chain": s["chain"]} for s in hv]),
                "audit_validator_spans": _tally([{**s, "principal": "alice-<i>@example.org"
                                                  if (s["principal"] or "").startswith("alice-") else s["principal"]}
                                                 for s in honest_spans]),
            }
            result["replay"] = {"accepted": replay_ok,
                                "by_credential": {k: dict(c) for k, c in by_kind.items()}}
            # ---- 3 + 4: invented hop, dropped hop (after a control: the attacker's code path, the true chain)
            for phase in ("control", "invent", "drop"):
                lab.phase = phase
                before = len(lab.attacks)
                for i in range(n):
                    r = await workflow(i, client_token(1000 + i))
                    if r.status_code != 200:
                        raise RuntimeError(f"{phase}: workflow failed: {r.status_code} {r.text}")
                attacks = lab.attacks[before:]
                flush()
                await asyncio.sleep(0.3)
                records, offset = _audit_since(audit_path, offset)
                spans = [_span_summary(s) for s in _validator_spans(records)]
                reached = [s for s in lab.seen["validator"] if s["phase"] == phase]
                result[phase] = {
                    "accepted": sum(a["accepted"] for a in attacks),
                    "attempts": len(attacks),
                    "claimed_chain": attacks[0]["claimed"] if attacks else None,
                    "refusals": dict(Counter(f"{a['code']}: {a['details']}" for a in attacks if not a["accepted"])),
                    "validator_current_call": _tally([{"principal_is_client": s["principal"].startswith("alice-"),
                                                       "chain": s["chain"]} for s in reached]),
                    "audit_validator_spans": _tally([{**s, "principal": "alice-<i>@example.org"
                                                      if (s["principal"] or "").startswith("alice-")
                                                      else s["principal"]} for s in spans]),
                }
    finally:
        for server in servers:
            await server.stop(0)
        for node in nodes.values():
            await node.close()
        await control.stop(0)
        control.sink.shutdown(2)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["audit"] = str(audit_path)
    return result


def _print(r: dict[str, Any]) -> None:
    r = json.loads(json.dumps(r).replace(f"spiffe://{TD}/agent/", ""))  # agent names, for reading
    n = r["n"]
    print(f"tree {r['tree']} ({r['commit']}), agentmesh from {r['agentmesh']}")
    print(f"delegation: {r['api']}; {n} workflows per phase; {r['seconds']} s")
    h = r["honest"]
    rows = [
        ("honest workflow bridge->ingestor->summarizer->validator", f"{h['workflow_reached_validator']} of {n} OK"),
        ("client credential seen by the summarizer", f"{h['client_jwt_seen_by_summarizer']} of {n} calls"),
        ("replayed at the bridge and accepted", f"{r['replay']['accepted']} of {n}"),
        ("control: attack code path, true chain, accepted", f"{r['control']['accepted']} of "
                                                             f"{r['control']['attempts']}"),
        ("invented hop (ghost) accepted by the validator", f"{r['invent']['accepted']} of {r['invent']['attempts']}"),
        ("dropped hop (no ingestor) accepted by the validator", f"{r['drop']['accepted']} of {r['drop']['attempts']}"),
    ]
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{width}}  {b}")
    print(f"  summarizer's metadata keys: {', '.join(h['summarizer_metadata_keys'])}")
    for v in h["validator_current_call"]:
        print(f"  honest: validator current_call() x{v['count']}: principal is the client: "
              f"{v['principal_is_client']}, chain {v['chain']}")
    for kind, c in r["replay"]["by_credential"].items():
        print(f"  replay of {kind}: {dict(c)}")
    for phase in ("control", "invent", "drop"):
        p = r[phase]
        print(f"  {phase}: claimed {p['claimed_chain']}")
        for ref, count in p["refusals"].items():
            print(f"    refused x{count}: {ref}")
        for v in p["validator_current_call"]:
            print(f"    validator current_call() x{v['count']}: principal is the client: {v['principal_is_client']}, "
                  f"chain {v['chain']}")
        for s in p["audit_validator_spans"]:
            print(f"    audit x{s.pop('count')}: {json.dumps(s)}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="delegation_before_after.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, help="run this agentmesh source tree (re-runs with PYTHONPATH=TREE)")
    p.add_argument("--n", type=int, default=20, help="workflows per phase")
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)
    if a.tree is not None and os.environ.get(_TREE_ENV) != str(a.tree.resolve()):
        tree = str(a.tree.resolve())
        env = {**os.environ, "PYTHONPATH": tree, _TREE_ENV: tree}
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])], env=env)
    import agentmesh

    tree = Path(agentmesh.__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    result = {"tree": str(tree), "commit": commit + ("+local changes" if dirty else ""), **asyncio.run(run(a.n))}
    _print(result)
    print(json.dumps({k: result[k] for k in ("tree", "commit", "n")}
                     | {"client_jwt_seen_by_summarizer": result["honest"]["client_jwt_seen_by_summarizer"],
                        "replay_accepted": result["replay"]["accepted"],
                        "invented_hop_accepted": result["invent"]["accepted"],
                        "dropped_hop_accepted": result["drop"]["accepted"]}))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
