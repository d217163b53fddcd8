"""`make demo`: the document workflow through the REST bridge, then the security at work.

1. a fresh CA in .mesh/demo, the three agents, the bridge and the control plane onboarded;
2. the mesh started as supervised processes (what `agentmesh up` does);
3. a document sent through the bridge with a client token: summary and verdict printed;
4. one readable line per attack the mesh stops;
5. the trace tree of the workflow call from the audit log; the mesh stopped, nothing left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import httpx

from agentmesh.cli.main import main as agentmesh_cli
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import MeshError
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.supervisor import Supervisor
from agentmesh.tokens import TokenAuthority
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from examples.workflow.prepare import prepare

WORKDIR = Path(os.environ.get("AGENTMESH_DEMO_DIR", ".mesh/demo"))
DOCUMENT = """# Why agents need a mesh
AI agents increasingly call each other to finish tasks that no single agent can do alone.
Each call crosses a trust boundary, so every agent must know exactly who is calling it.
Shared API keys and open ports make it impossible to tell one agent from another.

# What agentmesh does
Every agent receives its own certificate from the mesh CA, and every call uses mutual TLS.
Agents get short-lived tokens bound to their certificates, so a stolen token is useless elsewhere.
Policy rules decide which agent may call which method, and everything else is denied by default.

# Operating it
Rate limits keep a single noisy client from starving the agents.
Audit spans record every decision, and one trace follows a request across all agents.
Operators can revoke a certificate or a token, and running agents refuse it within seconds.
"""


def line(label: str, outcome: str) -> None:
    print(f"  {label:<44} -> {outcome}")


def problem(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message", ""))[:90]
    except ValueError:
        return r.text[:90]


async def security_tour(config: MeshConfig, base: str, http: httpx.AsyncClient, tokens: TokenAuthority) -> None:
    invoke = f"{base}/v1/agents/ingestor/agentmesh.v1.Agent/Invoke"
    body = {"id": "probe", "input": [{"text": "A short note. It has two sentences."}]}
    print("\nsecurity at work:")

    r = await http.post(invoke, json=body)
    line("no token", f"{r.status_code} {r.headers.get('www-authenticate', '')}")

    viewer = tokens.issue(sub="eve@example.org", roles=["viewer"], audience=config.tokens.audience, ttl=300)
    r = await http.post(invoke, json=body, headers={"Authorization": f"Bearer {viewer}"})
    line("a token without the client role", f"{r.status_code} {problem(r)}")

    client = tokens.issue(sub="mallory@example.org", roles=["client"], audience=config.tokens.audience, ttl=300)
    auth = {"Authorization": f"Bearer {client}"}
    r = await http.post(f"{base}/v1/agents/validator/agentmesh.v1.Agent/Invoke", json=body, headers=auth)
    line("calling the validator from outside", f"{r.status_code} {problem(r)}")

    statuses = []
    for _ in range(12):
        r = await http.post(f"{base}/v1/agents/ingestor/agentmesh.v1.Agent/Describe", json={}, headers=auth)
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    line(f"a burst of {len(statuses)} calls", f"{r.status_code} Retry-After: {r.headers.get('retry-after')}s, "
         f"RateLimit-Remaining: {r.headers.get('ratelimit-remaining')}")

    # a compromised agent holds only the transaction token of the work it was given, never the client's token
    node = MeshNode(config, "summarizer", renew=False)
    try:
        await node.start(timeout=10)
        txn = await node.exchange(client, route="demo")
    finally:
        await node.close()
    r = await http.post(invoke, json=body, headers={"Authorization": f"Bearer {txn.token}"})
    line("an agent replays its transaction token", f"{r.status_code} {problem(r)}")

    rogue = CertificateAuthority.init(WORKDIR / "rogue-ca", config.trust_domain, force=True)
    write_identity(rogue.issue("bridge"), WORKDIR / "imposter")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(config.ca_dir / "bundle.pem").read_bytes(),
        private_key=(WORKDIR / "imposter" / "key.pem").read_bytes(),
        certificate_chain=(WORKDIR / "imposter" / "cert.pem").read_bytes())
    async with grpc.aio.secure_channel(config.agent("ingestor").address, creds,
                                       options=[("grpc.ssl_target_name_override", "ingestor")]) as ch:
        try:
            await agent_pb2_grpc.AgentStub(ch).Invoke(agent_pb2.Task(id="x"), timeout=5)
            outcome = "ACCEPTED (this must never happen)"
        except grpc.aio.AioRpcError as e:
            outcome = f"handshake refused ({e.code().name})"
    line("an imposter certificate (rogue CA)", outcome)

    # the kill switch: the summarizer is compromised; the operator revokes it while documents keep coming
    def fresh() -> dict[str, str]:  # a new principal per call: the clients' rate limit is per principal
        sub = f"user-{secrets.token_hex(3)}@example.org"
        token = tokens.issue(sub=sub, roles=["client"], audience=config.tokens.audience, ttl=300)
        return {"Authorization": f"Bearer {token}"}

    r = await http.post(invoke, json=body, headers=fresh())
    before = r.status_code
    assert config.source is not None
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        agentmesh_cli(["revoke-agent", "summarizer", "--config", str(config.source), "--reason", "demo: compromised"])
    while time.monotonic() - started < 10:
        r = await http.post(invoke, json=body, headers=fresh())
        if r.status_code != 200:
            break
        await asyncio.sleep(0.02)
    line("kill switch: revoke-agent summarizer",
         f"{before} before; {r.status_code} {(time.monotonic() - started) * 1000:.0f} ms after: {problem(r)}")


async def run() -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    started = time.monotonic()
    config_path = prepare(WORKDIR)
    config = load_config(config_path)
    print(f"CA for spiffe://{config.trust_domain} in {config.ca_dir}; onboarded "
          f"{', '.join([*config.agents, 'bridge', 'control'])}")
    sup = Supervisor(config, config_path)
    try:
        await sup.start()
        print(sup.table())
        tokens = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
        client = tokens.issue(sub="alice@example.org", roles=["client"], audience=config.tokens.audience, ttl=300)
        base = f"https://localhost:{config.bridge.listen.rpartition(':')[2]}"
        trace_id = secrets.token_hex(16)
        async with httpx.AsyncClient(verify=str(config.ca_dir / "bundle.pem"), timeout=15) as http:
            r = await http.post(
                f"{base}/v1/agents/ingestor/agentmesh.v1.Agent/Invoke",
                json={"id": "doc-1", "input": [{"text": DOCUMENT, "mimeType": "text/markdown"}]},
                headers={"Authorization": f"Bearer {client}",
                         "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
            )
            if r.status_code != 200:
                print(f"workflow call failed: {r.status_code} {r.text}", file=sys.stderr)
                return 1
            result = r.json()
            summary, verdict = result["output"][0]["text"], result["output"][1]["data"]
            print("\nPOST /v1/agents/ingestor/agentmesh.v1.Agent/Invoke as alice@example.org (role client):")
            print(f"  summary: {summary}")
            print(f"  verdict: {verdict['verdict']} (key-term coverage {verdict['coverage']:.0%}, "
                  f"{int(verdict['summary_words'])} words, forbidden content: {verdict['forbidden'] or 'none'})")
            await security_tour(config, base, http, tokens)
    finally:
        await sup.stop()
    assert config.audit.jsonl_path is not None
    print(f"\ntrace of the workflow call (agentmesh audit show --trace {trace_id[:12]} {config.audit.jsonl_path}):")
    agentmesh_cli(["audit", "show", "--trace", trace_id, str(config.audit.jsonl_path)])
    print(f"\nmesh stopped; no process left behind. {time.monotonic() - started:.1f}s in all.")
    return 0


def main() -> int:
    try:
        return asyncio.run(run())
    except MeshError as e:
        print(f"demo failed: {e.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
