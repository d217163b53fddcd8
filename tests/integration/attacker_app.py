"""ATTACKER CODE: the servicer of "mallory", a compromised mesh member, for test_delegation_attacks.py.

It runs as a real agent process (``agentmesh up`` / ``agentmesh agent mallory`` loads it through the
mesh file's ``app: attacker_app:Mallory``) with a genuine certificate, key and bound token of its own.
When the bridge delegates a client's request to it, it takes what it legitimately received (the
transaction token and the hop links, :func:`agentmesh.context.current_call`) and tries to abuse it
with hand-made gRPC calls over its own mTLS certificate, around the client chain (which would only
ever append its link honestly). Task metadata ``attack`` picks the scenario.

Every scenario also makes, in the same served call and with the same transaction token and links:

* ``control``: the same hand-made call, but with the chain built correctly (the bridge's link, then
  mallory's own link to the target), so a refused attack is refused for what it changed, not for how
  the harness builds calls;
* ``honest``: the delegation onward through the normal client chain (``node.stub``), which appends
  mallory's link by itself.

The answer is JSON in the first output part: for each call the gRPC status code observed, its details
and the trace id it was sent with (``traceparent``), so the test finds its audit span.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from agentmesh.context import CallContext, current_call
from agentmesh.errors import MeshError
from agentmesh.metadata import AUTHORIZATION, TXN_LINKS, TXN_TOKEN
from agentmesh.runtime.channel import secure_channel
from agentmesh.runtime.node import MeshNode
from agentmesh.tokens.links import sign_link
from agentmesh.tokens.txn import sign_txn_token, token_hash
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

LINK_LEEWAY = 1.0  # tokens.leeway of the test mesh (Checks.leeway): tolerated skew on a link's exp
SOURCE = ("Agent meshes carry calls between autonomous agents. Every agent holds a certificate from the mesh CA. "
          "Mutual TLS proves the identity of both agents on every call. Policy rules decide which agent may call "
          "which method, and everything else is denied by default.")
SUMMARY = ("Agent meshes carry calls between autonomous agents. Mutual TLS proves the identity of both agents on "
           "every call.")

Outcome = dict[str, str]


def claims_of(jws: str) -> dict[str, Any]:
    payload = jws.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(jws: str) -> dict[str, Any]:
    head = jws.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def task_for(target: str) -> agent_pb2.Task:
    if target == "validator":  # the validator wants (source, summary)
        parts = [agent_pb2.Part(text=SOURCE), agent_pb2.Part(text=SUMMARY)]
    else:  # the summarizer wants a document (and asks the validator in turn)
        parts = [agent_pb2.Part(text=SOURCE)]
    return agent_pb2.Task(id=f"mallory-{secrets.token_hex(4)}", input=parts)


class Mallory(agent_pb2_grpc.AgentServicer):
    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.config = node.config
        self.me = str(node.spiffe_id)
        own = self.config.identity_dir(node.name)
        key = serialization.load_pem_private_key((own / "key.pem").read_bytes(), password=None)
        self.key: Any = key
        self.cert_der = x509.load_pem_x509_certificates((own / "cert.pem").read_bytes())[0].public_bytes(
            serialization.Encoding.DER)
        self.bundle = own / "bundle.pem"
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.earlier: tuple[str, tuple[str, ...]] | None = None  # a delegation received before this one
        self.scenarios: dict[str, Callable[[CallContext], Awaitable[dict[str, Any]]]] = {
            "baseline": self.baseline, "metadata": self.metadata, "own-token": self.own_token,
            "invent-hop": self.invent_hop, "drop-hop": self.drop_hop, "reorder": self.reorder,
            "retarget": self.retarget, "expired": self.expired, "forge": self.forge, "depth": self.depth,
            "splice": self.splice,
        }

    # ------------------------------------------------------------------ the served call
    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        call = current_call()
        scenario = self.scenarios.get(request.metadata.get("attack", ""))
        if scenario is None or call.txn_token is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "mallory wants a delegated call and an attack")
        assert scenario is not None and call.txn_token is not None
        report = {"received": {"txn": call.txn_id, "txn_token": call.txn_token, "chain": list(call.chain),
                               "links": list(call.links)},
                  **await scenario(call)}
        self.earlier = (call.txn_token, call.links)
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED,
                                    output=[agent_pb2.Part(text=json.dumps(report))])

    # ------------------------------------------------------------------ tools of the trade
    def id_of(self, name: str) -> str:
        return str(self.config.spiffe_id(name))

    def cert_of(self, name: str) -> bytes:
        """Another member's certificate (public: every TLS handshake with it shows it)."""
        pem = (self.config.identity_dir(name) / "cert.pem").read_bytes()
        return x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.DER)

    def link(self, txn_token: str, *, aud: str, ph: str | None, signer: str | None = None,
             cert_der: bytes | None = None, now: float | None = None, ttl: float = 30.0) -> str:
        """A link signed with mallory's own key; by default in its own name, with its own certificate."""
        return sign_link(self.key, cert_der or self.cert_der, signer=signer or self.me, aud=self.id_of(aud),
                         tth=token_hash(txn_token), ph=ph, now=time.time() if now is None else now, ttl=ttl)

    def own_link(self, call: CallContext, target: str) -> str:
        """What the client chain would append: mallory's link to ``target`` after the received links."""
        assert call.txn_token is not None
        return self.link(call.txn_token, aud=target, ph=token_hash(call.links[-1]))

    async def raw(self, target: str, metadata: list[tuple[str, str]]) -> Outcome:
        """One hand-made call over mallory's own mTLS certificate (no client chain), with a fresh trace."""
        trace_id = secrets.token_hex(16)
        md = [*metadata, ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")]
        ch = self.channels.get(target)
        if ch is None:
            ch = self.channels[target] = secure_channel(self.node.identity, self.config.agent(target).address, target)
        try:
            await agent_pb2_grpc.AgentStub(ch).Invoke(task_for(target), metadata=md, timeout=10)
            code, details = "OK", ""
        except grpc.aio.AioRpcError as e:
            code, details = e.code().name, e.details() or ""
        return {"target": target, "code": code, "details": details, "trace_id": trace_id}

    async def delegated(self, call: CallContext, target: str, links: list[str], *,
                        txn_token: str | None = None, own: str | None = None) -> Outcome:
        """A hand-made delegated call: mallory's own bound token, a transaction token, these links."""
        token = own if own is not None else await self.node.tokens.token()
        md = [(AUTHORIZATION, f"Bearer {token}"), (TXN_TOKEN, txn_token or call.txn_token or "")]
        if links:
            md.append((TXN_LINKS, ",".join(links)))
        return await self.raw(target, md)

    async def honest(self, target: str) -> Outcome:
        """Delegating onward the normal way: the client chain appends mallory's own link."""
        try:
            await self.node.stub(target, agent_pb2_grpc.AgentStub).Invoke(task_for(target), timeout=10)
            return {"target": target, "code": "OK", "details": ""}
        except grpc.aio.AioRpcError as e:
            return {"target": target, "code": e.code().name, "details": e.details() or ""}

    async def paired(self, call: CallContext, targets: tuple[str, ...],
                     attacks: dict[str, Awaitable[Outcome]]) -> dict[str, Any]:
        """The control and the honest call to every target, and the attacks: all with the same chain."""
        control = {t: await self.delegated(call, t, [*call.links, self.own_link(call, t)]) for t in targets}
        honest = {t: await self.honest(t) for t in targets}
        return {"control": control, "honest": honest, "attacks": {k: await v for k, v in attacks.items()}}

    async def baseline(self, call: CallContext) -> dict[str, Any]:
        return await self.paired(call, ("summarizer", "validator"), {})

    # ------------------------------------------------------------------ 1. the client's token
    async def metadata(self, call: CallContext) -> dict[str, Any]:
        """Everything it received, and the transaction token (and its own token) replayed at the bridge."""
        assert call.txn_token is not None
        received = [[k, v] for k, v in call.metadata or () if isinstance(v, str)]
        url = f"https://localhost:{self.config.bridge.listen.rpartition(':')[2]}" \
              f"/v1/agents/ingestor/agentmesh.v1.Agent/Invoke"
        body = {"id": "replay", "input": [{"text": SOURCE}]}
        bridge: dict[str, int] = {}
        async with httpx.AsyncClient(verify=str(self.bundle), timeout=10) as http:
            for label, token in (("txn-token", call.txn_token), ("own-token", await self.node.tokens.token()),
                                 ("hop-link", call.links[0])):
                r = await http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
                bridge[label] = r.status_code
        return {"metadata": received, "bridge": bridge, **await self.paired(call, ("summarizer",), {})}

    # ------------------------------------------------------------------ 2. the transaction token as its own
    async def own_token(self, call: CallContext) -> dict[str, Any]:
        assert call.txn_token is not None
        t = call.txn_token
        return await self.paired(call, ("summarizer",), {
            "txn-token-as-own": self.raw("summarizer", [(AUTHORIZATION, f"Bearer {t}")]),
            "txn-token-as-own-with-chain": self.delegated(
                call, "summarizer", [*call.links, self.own_link(call, "summarizer")], own=t),
            "txn-token-without-links": self.delegated(call, "summarizer", []),
        })

    # ------------------------------------------------------------------ 3. an invented earlier hop
    async def invent_hop(self, call: CallContext) -> dict[str, Any]:
        assert call.txn_token is not None
        t, (first,) = call.txn_token, call.links

        def via_ingestor(cert_der: bytes) -> list[str]:
            fake = self.link(t, aud="mallory", ph=token_hash(first), signer=self.id_of("ingestor"), cert_der=cert_der)
            return [first, fake, self.link(t, aud="summarizer", ph=token_hash(fake))]

        before = self.link(t, aud="bridge", ph=None)  # a hop of its own before the bridge's
        return await self.paired(call, ("summarizer",), {
            "ingestor-hop-own-certificate": self.delegated(call, "summarizer", via_ingestor(self.cert_der)),
            "ingestor-hop-ingestor-certificate": self.delegated(call, "summarizer",
                                                                via_ingestor(self.cert_of("ingestor"))),
            "hop-before-the-first": self.delegated(call, "summarizer", [
                before, first, self.link(t, aud="summarizer", ph=token_hash(first))]),
        })

    # ------------------------------------------------------------------ 4. a dropped hop
    async def drop_hop(self, call: CallContext) -> dict[str, Any]:
        assert call.txn_token is not None
        t, (first,) = call.txn_token, call.links
        return await self.paired(call, ("summarizer",), {
            "own-link-only": self.delegated(call, "summarizer", [self.link(t, aud="summarizer", ph=None)]),
            "own-link-only-still-chained": self.delegated(
                call, "summarizer", [self.link(t, aud="summarizer", ph=token_hash(first))]),
            "own-link-unchained": self.delegated(call, "summarizer", [first, self.link(t, aud="summarizer", ph=None)]),
        })

    # ------------------------------------------------------------------ 5. reordered hops
    async def reorder(self, call: CallContext) -> dict[str, Any]:
        assert call.txn_token is not None
        t, (first,) = call.txn_token, call.links
        mine = self.own_link(call, "summarizer")
        hop1 = self.link(t, aud="mallory", ph=token_hash(first))
        hop2 = self.link(t, aud="summarizer", ph=token_hash(hop1))
        return await self.paired(call, ("summarizer",), {
            "own-link-first": self.delegated(call, "summarizer", [mine, first]),
            "swapped-after-the-first": self.delegated(call, "summarizer", [first, hop2, hop1]),
        })

    # ------------------------------------------------------------------ 6. a chain reused toward another target
    async def retarget(self, call: CallContext) -> dict[str, Any]:
        return await self.paired(call, ("summarizer", "validator"), {
            "received-chain-forwarded": self.delegated(call, "summarizer", list(call.links)),
            "link-for-summarizer-sent-to-validator": self.delegated(
                call, "validator", [*call.links, self.own_link(call, "summarizer")]),
        })

    # ------------------------------------------------------------------ 7. a link replayed after its exp
    async def expired(self, call: CallContext) -> dict[str, Any]:
        assert call.txn_token is not None
        t, (first,) = call.txn_token, call.links
        out = await self.paired(call, ("summarizer",), {
            "own-link-backdated": self.delegated(call, "summarizer", [
                first, self.link(t, aud="summarizer", ph=token_hash(first), now=time.time() - 30, ttl=2)]),
        })
        kept = self.link(t, aud="summarizer", ph=token_hash(first), ttl=1.0)  # genuine; replayed once expired
        wait = claims_of(kept)["exp"] + LINK_LEEWAY + 0.3 - time.time()
        out["waited"] = round(wait, 2)
        await asyncio.sleep(max(0.0, wait))
        out["attacks"]["own-link-replayed-after-exp"] = await self.delegated(call, "summarizer", [first, kept])
        # the bridge's link has expired too by now: earlier links were checked in time by the hop they were for,
        # and the transaction token bounds the chain, so honest work that takes longer still goes on
        out["honest-after-exp"] = await self.honest("summarizer")
        return out

    # ------------------------------------------------------------------ 8. a link forged in another's name
    async def forge(self, call: CallContext) -> dict[str, Any]:
        assert call.txn_token is not None
        t = call.txn_token
        bridge = self.id_of("bridge")

        def as_bridge(cert_der: bytes) -> list[str]:
            fake = self.link(t, aud="mallory", ph=None, signer=bridge, cert_der=cert_der)
            return [fake, self.link(t, aud="summarizer", ph=token_hash(fake))]

        # a transaction token of its own making: the real one's claims, mallory as the requester
        head = header_of(t)
        claims = {k: v for k, v in claims_of(t).items() if k not in ("iss", "iat", "exp")}
        forged = sign_txn_token(self.key, "ES256", head["kid"], claims_of(t)["iss"], {**claims, "req_wl": self.me},
                                iat=time.time(), exp=time.time() + 60)
        return await self.paired(call, ("summarizer",), {
            "bridge-link-own-certificate": self.delegated(call, "summarizer", as_bridge(self.cert_der)),
            "bridge-link-bridge-certificate": self.delegated(call, "summarizer", as_bridge(self.cert_of("bridge"))),
            "bridge-link-self-made-certificate": self.delegated(call, "summarizer",
                                                                as_bridge(self.self_made_cert(bridge))),
            "own-transaction-token": self.delegated(call, "summarizer", [self.link(forged, aud="summarizer", ph=None)],
                                                    txn_token=forged),
        })

    def self_made_cert(self, spiffe_id: str) -> bytes:
        """A certificate naming ``spiffe_id``, signed by mallory itself (no CA of the mesh)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.DER)

    # ------------------------------------------------------------------ 9. past the depth limit
    async def depth(self, call: CallContext) -> dict[str, Any]:
        assert call.txn_token is not None
        t, (first,) = call.txn_token, call.links
        links = [first]
        for _ in range(self.config.tokens.max_delegation_depth - 1):  # hops through itself: each one genuine
            links.append(self.link(t, aud="mallory", ph=token_hash(links[-1])))
        links.append(self.link(t, aud="validator", ph=token_hash(links[-1])))
        return await self.paired(call, ("validator",), {
            "one-hop-past-the-limit": self.delegated(call, "validator", links),
        })

    # ------------------------------------------------------------------ a hop spliced from another transaction
    async def splice(self, call: CallContext) -> dict[str, Any]:
        assert call.txn_token is not None and self.earlier is not None, "splice needs an earlier delegation"
        old_token, (old_first,) = self.earlier
        (first,) = call.links
        exchanged: dict[str, str] = {}
        for label, subject in (("txn-token", call.txn_token), ("own-token", await self.node.tokens.token())):
            try:  # the transaction token service: start a transaction of its own
                await self.node.exchange(subject)
                exchanged[label] = "OK"
            except MeshError as e:
                exchanged[label] = f"refused: {e.message}"
        out = await self.paired(call, ("summarizer",), {
            "earlier-bridge-link": self.delegated(call, "summarizer", [
                old_first, self.link(call.txn_token, aud="summarizer", ph=token_hash(old_first))]),
            "earlier-txn-token": self.delegated(call, "summarizer", [
                first, self.link(old_token, aud="summarizer", ph=token_hash(first))], txn_token=old_token),
        })
        return {**out, "exchange": exchanged}
