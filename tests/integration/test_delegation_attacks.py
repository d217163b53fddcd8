"""Verifiable delegation (issue 10) against real processes: a compromised member cannot abuse what it
is given.

``agentmesh up`` runs the control plane, the example workflow (ingestor -> summarizer -> validator),
the REST bridge and "mallory": a member whose servicer is attacker code (attacker_app.py) in its own
OS process, with a genuine certificate, key and bound token. Policy lets clients reach mallory via the
bridge and mallory delegate to the summarizer and the validator, so every refusal below comes from
the delegation checks (agentmesh.tokens.delegation), not from policy. For each attack mallory also
makes, in the same served call with the same transaction token and links, the correctly built call
(``control``) and the honest onward delegation through the client chain (``honest``): both succeed.
Each refusal is then found in the receiving member's audit span (by the trace id mallory sent), with
the ``agentmesh.denied`` event of stage "delegation" and ``agentmesh.delegation.check`` naming it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from meshkit import free_port, write_mesh

from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.tokens import TokenAuthority

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TD = "example.org"
MAX_DEPTH = 3
WORKFLOW = "examples.workflow"
AGENTS: dict[str, dict[str, Any]] = {
    "ingestor": {"roles": ["ingestor"], "app": f"{WORKFLOW}.ingestor:Ingestor"},
    "summarizer": {"roles": ["summarizer"], "app": f"{WORKFLOW}.summarizer:Summarizer"},
    "validator": {"roles": ["validator"], "app": f"{WORKFLOW}.validator:Validator"},
    "mallory": {"roles": ["worker"], "app": "attacker_app:Mallory"},
}
INVOKE = ["/agentmesh.v1.Agent/Invoke"]
POLICY = [
    {"name": "client-starts-workflow", "action": "allow", "to": ["ingestor"], "roles": ["client"], "via": ["bridge"]},
    {"name": "client-calls-mallory", "action": "allow", "to": ["mallory"], "roles": ["client"], "via": ["bridge"]},
    {"name": "ingestor-to-summarizer", "action": "allow", "to": ["summarizer"], "methods": INVOKE,
     "roles": ["client"], "via": ["ingestor"]},
    {"name": "summarizer-to-validator", "action": "allow", "to": ["validator"], "methods": INVOKE,
     "roles": ["client"], "via": ["summarizer"]},
    {"name": "mallory-delegates", "action": "allow", "to": ["summarizer", "validator"], "methods": INVOKE,
     "roles": ["client"], "via": ["mallory"]},
]
DOCUMENT = """# Agent meshes
Agent meshes carry calls between autonomous agents. Every agent holds a certificate from the mesh CA.
Mutual TLS proves the identity of both agents on every call.

# Tokens and policy
Each agent receives a short-lived token bound to its certificate. A stolen token is useless to another agent.
Policy rules decide which agent may call which method, and everything else is denied.
"""

#: scenario -> attack -> (denial stage, agentmesh.delegation.check) in the receiving member's audit span
EXPECTED: dict[str, dict[str, tuple[str, str | None]]] = {
    # 2. the transaction token presented as mallory's own token (or without any chain)
    "own-token": {"txn-token-as-own": ("token", None), "txn-token-as-own-with-chain": ("token", None),
                  "txn-token-without-links": ("delegation", "links")},
    # 3. an invented earlier hop: the ingestor between the bridge and mallory, or a hop before the bridge's
    "invent-hop": {"ingestor-hop-own-certificate": ("delegation", "link-signer"),
                   "ingestor-hop-ingestor-certificate": ("delegation", "link-signature"),
                   "hop-before-the-first": ("delegation", "first-hop")},
    # 4. the bridge's hop dropped, or the hash link to it
    "drop-hop": {"own-link-only": ("delegation", "first-hop"),
                 "own-link-only-still-chained": ("delegation", "first-hop"),
                 "own-link-unchained": ("delegation", "link-order")},
    # 5. hops reordered
    "reorder": {"own-link-first": ("delegation", "first-hop"),
                "swapped-after-the-first": ("delegation", "link-order")},
    # 6. the chain reused toward another member: forwarded as received, or with a link for another target
    "retarget": {"received-chain-forwarded": ("delegation", "last-hop"),
                 "link-for-summarizer-sent-to-validator": ("delegation", "audience")},
    # 7. a link past its exp: mallory's own backdated one, and the bridge's replayed once it expired
    "expired": {"own-link-backdated": ("delegation", "link-expired"),
                "own-link-replayed-after-exp": ("delegation", "link-expired")},
    # 8. the bridge's link forged with mallory's key: in its own certificate, the bridge's, a self-made one;
    #    and a transaction token of mallory's making
    "forge": {"bridge-link-own-certificate": ("delegation", "link-signer"),
              "bridge-link-bridge-certificate": ("delegation", "link-signature"),
              "bridge-link-self-made-certificate": ("delegation", "link-certificate"),
              "own-transaction-token": ("delegation", "txn-token")},
    # 9. one hop past tokens.max_delegation_depth (every link genuine: hops through itself)
    "depth": {"one-hop-past-the-limit": ("delegation", "depth")},
    # links and transaction tokens of two transactions mixed
    "splice": {"earlier-bridge-link": ("delegation", "link-txn"),
               "earlier-txn-token": ("delegation", "link-txn")},
}


@dataclass
class LiveMesh:
    root: Path
    config: MeshConfig
    authority: TokenAuthority
    http: httpx.Client
    secrets: list[str] = field(default_factory=list)  # every client and transaction token seen

    @property
    def audit_path(self) -> Path:
        assert self.config.audit.jsonl_path is not None
        return self.config.audit.jsonl_path

    def spiffe(self, name: str) -> str:
        return f"spiffe://{TD}/agent/{name}"

    def client_token(self) -> str:
        token = self.authority.issue(sub=f"user-{secrets.token_hex(3)}@example.org", roles=["client"],
                                     audience=self.config.tokens.audience, ttl=300)
        self.secrets.append(token)
        return token

    def invoke(self, agent: str, body: dict[str, Any], token: str | None = None,
               trace_id: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.client_token()}"}
        if trace_id is not None:
            headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        return self.http.post(f"/v1/agents/{agent}/agentmesh.v1.Agent/Invoke", json=body, headers=headers)

    def attack(self, scenario: str) -> dict[str, Any]:
        """Has mallory run ``scenario`` inside a delegated call from the bridge; its report."""
        r = self.invoke("mallory", {"id": scenario, "input": [{"text": "go"}], "metadata": {"attack": scenario}})
        assert r.status_code == 200, r.text
        report: dict[str, Any] = json.loads(r.json()["output"][0]["text"])
        self.secrets.append(report["received"]["txn_token"])
        return report

    def spans(self) -> list[dict[str, Any]]:
        lines = self.audit_path.read_bytes().split(b"\n")[:-1]  # the last piece may be a line being written
        return [json.loads(line) for line in lines if line.strip()]

    def wait_spans(self, want: Callable[[list[dict[str, Any]]], bool], timeout: float = 10) -> list[dict[str, Any]]:
        """The audit records once ``want`` holds (each member exports its spans every 0.5 s)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if want(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def server_span(self, trace_id: str, service: str) -> dict[str, Any]:
        def find(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [s for s in spans if s["trace_id"] == trace_id and s["service"] == service
                    and s["kind"] == "server"]

        found = find(self.wait_spans(lambda spans: bool(find(spans))))
        assert len(found) == 1, f"{service}: {len(found)} server spans of trace {trace_id}"
        return found[0]


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Reads ``proc``'s stdout until a line holds ``needle``; everything read if not within ``timeout``."""
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if needle in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout):
        raise AssertionError(f"no {needle!r} within {timeout}s: {''.join(seen)}")
    return "".join(seen)


def _logs(root: Path) -> str:
    logs = sorted((root / "logs").glob("*.log"))
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    root = tmp_path_factory.mktemp("delegation")
    path = write_mesh(root, AGENTS, policy=POLICY,
                      tokens={"link_ttl": "1s", "leeway": "1s", "max_delegation_depth": MAX_DEPTH},
                      bridge={"listen": f"127.0.0.1:{free_port()}"})
    config = load_config(path)
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "agentmesh.cli.main", "up", str(path)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        try:
            _wait_for_line(proc, "mesh up", 60)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_logs(root)}") from None
        authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
        ctx = ssl.create_default_context(cafile=str(config.identity_dir("bridge") / "bundle.pem"))
        port = config.bridge.listen.rpartition(":")[2]
        with httpx.Client(base_url=f"https://localhost:{port}", verify=ctx, timeout=30) as http:
            yield LiveMesh(root, config, authority, http)
    finally:
        proc.send_signal(signal.SIGTERM)  # `up` drains and stops every child it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _assert_paired(report: dict[str, Any], mesh: LiveMesh) -> None:
    """The same request without the attack: the correctly built call and the honest delegation pass,
    and the control's audit span shows the verified chain bridge -> mallory under the same transaction."""
    assert report["received"]["chain"] == [mesh.spiffe("bridge")]
    for target, outcome in report["control"].items():
        assert outcome["code"] == "OK", (target, outcome)
        span = mesh.server_span(outcome["trace_id"], target)
        assert span["status"] == "OK" and not span["events"]
        assert span["attributes"]["agentmesh.delegation.chain"] == [mesh.spiffe("bridge"), mesh.spiffe("mallory")]
        assert span["attributes"]["agentmesh.txn"] == report["received"]["txn"]
    for target, outcome in report["honest"].items():
        assert outcome["code"] == "OK", (target, outcome)


def _assert_refused(report: dict[str, Any], scenario: str, mesh: LiveMesh) -> None:
    assert set(report["attacks"]) == set(EXPECTED[scenario])
    for name, (stage, check) in EXPECTED[scenario].items():
        outcome = report["attacks"][name]
        assert outcome["code"] == "UNAUTHENTICATED", (name, outcome)
        span = mesh.server_span(outcome["trace_id"], outcome["target"])
        denied = [e for e in span["events"] if e["name"] == "agentmesh.denied"]
        assert [e["attributes"]["stage"] for e in denied] == [stage], (name, span)
        assert span["attributes"].get("agentmesh.delegation.check") == check, (name, span["attributes"])
        # a refusal on the server: UNAUTHENTICATED recorded, span status UNSET (written "OK" in the JSONL)
        assert span["status"] == "OK" and span["attributes"]["rpc.response.status_code"] == "UNAUTHENTICATED"
        assert span["attributes"]["error.type"] == "UNAUTHENTICATED"
        assert span["attributes"]["agentmesh.peer.spiffe_id"] == mesh.spiffe("mallory")
        assert "agentmesh.txn" not in span["attributes"], name  # nothing unverified is recorded as the txn


def test_the_honest_workflow_through_the_bridge_is_one_transaction(mesh: LiveMesh) -> None:
    trace_id = secrets.token_hex(16)
    r = mesh.invoke("ingestor", {"id": "doc-1", "input": [{"text": DOCUMENT}]}, trace_id=trace_id)
    assert r.status_code == 200, r.text
    assert r.json()["output"][1]["data"]["verdict"] == "pass"

    members = ("ingestor", "summarizer", "validator")
    spans = {m: mesh.server_span(trace_id, m) for m in members}
    txns = {s["attributes"].get("agentmesh.txn") for s in spans.values()}
    assert len(txns) == 1 and None not in txns, txns
    (txn,) = txns

    def issued_by_control(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in spans if s["service"] == "control" and s["attributes"].get("agentmesh.txn") == txn]

    # the control plane issued it once, for this principal, in the request's trace
    records = mesh.wait_spans(lambda spans: bool(issued_by_control(spans)))
    issued = issued_by_control(records)
    grpc_servers = [s for s in records if s["trace_id"] == trace_id and s["kind"] == "server"
                    and s["attributes"].get("rpc.system.name") == "grpc"]
    # every gRPC server span of the request: the three hops, and the exchange at the control plane
    assert sorted(s["service"] for s in grpc_servers) == sorted((*members, "control"))
    assert {s["attributes"].get("agentmesh.txn") for s in grpc_servers} == {txn}
    assert [s["name"] for s in issued] == ["agentmesh.v1.TokenService/ExchangeTransactionToken"]
    assert issued[0]["attributes"]["enduser.id"] == spans["ingestor"]["attributes"]["enduser.id"]
    bridge = mesh.server_span(trace_id, "bridge")  # the edge's HTTP span: where the transaction started
    assert bridge["attributes"].get("agentmesh.txn") == txn
    chain = [mesh.spiffe(n) for n in ("bridge", "ingestor", "summarizer")]
    assert spans["validator"]["attributes"]["agentmesh.delegation.chain"] == chain
    assert spans["summarizer"]["attributes"]["agentmesh.delegation.chain"] == chain[:2]
    assert all(s["status"] == "OK" and s["attributes"]["enduser.id"].startswith("user-") for s in spans.values())


def test_mallory_never_holds_the_client_token_and_cannot_replay_what_it_holds_at_the_bridge(mesh: LiveMesh) -> None:
    """1. The client's JWT stops at the bridge; the transaction token, mallory's own token and a hop link
    are all refused at the bridge (401)."""
    client = mesh.client_token()
    r = mesh.invoke("mallory", {"id": "md", "input": [{"text": "go"}], "metadata": {"attack": "metadata"}},
                    token=client)
    assert r.status_code == 200, r.text
    report = json.loads(r.json()["output"][0]["text"])
    txn_token = report["received"]["txn_token"]
    mesh.secrets.append(txn_token)
    received = dict(report["metadata"])
    assert {"authorization", "txn-token", "txn-links"} <= set(received)
    signature = client.rsplit(".", 1)[1]
    for key, value in report["metadata"]:
        assert value != client and client not in value and signature not in value, key
    assert received["txn-token"] == txn_token != client
    assert received["authorization"] != f"Bearer {client}"  # the bridge's own bound token
    assert report["bridge"] == {"txn-token": 401, "own-token": 401, "hop-link": 401}
    # and from outside too: the transaction token is no bearer token at the bridge
    r = mesh.invoke("ingestor", {"id": "replay", "input": [{"text": DOCUMENT}]}, token=txn_token)
    assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
    _assert_paired(report, mesh)


@pytest.mark.parametrize("scenario", [s for s in EXPECTED if s != "splice"])
def test_an_attack_on_the_chain_is_refused_by_its_check(mesh: LiveMesh, scenario: str) -> None:
    """2.-9.: each attack refused (UNAUTHENTICATED), the same call built honestly accepted."""
    started = time.monotonic()
    report = mesh.attack(scenario)
    _assert_paired(report, mesh)
    _assert_refused(report, scenario, mesh)
    if scenario == "expired":  # the wait: mallory's link (tokens.link_ttl 1s) plus the 1 s leeway
        assert 0 < report["waited"] < 4 and time.monotonic() - started < 15
        # honest work that outlives the earlier links goes on: only the link to the receiver must be fresh
        assert report["honest-after-exp"]["code"] == "OK", report["honest-after-exp"]


def test_links_and_tokens_of_two_transactions_do_not_mix(mesh: LiveMesh) -> None:
    earlier = mesh.attack("baseline")
    _assert_paired(earlier, mesh)
    report = mesh.attack("splice")
    assert report["received"]["txn"] != earlier["received"]["txn"]
    _assert_paired(report, mesh)
    _assert_refused(report, "splice", mesh)
    # nor can mallory start a transaction of its own at the transaction token service
    assert report["exchange"]["txn-token"].startswith("refused:")
    assert report["exchange"]["own-token"].startswith("refused:")


def test_no_audit_line_holds_a_client_or_transaction_token(mesh: LiveMesh) -> None:
    """Run last: covers the tokens of every test before it, and of one more workflow."""
    trace_id = secrets.token_hex(16)
    assert mesh.invoke("ingestor", {"id": "doc-2", "input": [{"text": DOCUMENT}]}, trace_id=trace_id).status_code == 200
    mesh.attack("baseline")
    mesh.server_span(trace_id, "validator")
    time.sleep(1.0)  # every member has exported what it ended (0.5 s schedule)
    raw = mesh.audit_path.read_bytes()
    assert raw.count(b"\n") > 50
    assert len(mesh.secrets) >= 4
    for token in mesh.secrets:
        for piece in (token, token.rsplit(".", 1)[1]):
            assert piece.encode() not in raw
