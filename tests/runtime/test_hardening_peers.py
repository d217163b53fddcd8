"""Issue 13 item 5 against real servers on port 0: each attack FAILS beside the same request without it.

* a client certificate with an RSA-1024 key, signed by the real issuing CA, is refused (a P-256 one passes);
* a client certificate signed by a CA:TRUE certificate that reuses the issuing CA's subject verifies in TLS
  (self-issued certificates do not count against the issuing CA's path length); the chain the peer presented,
  as the server's auth context shows it, is refused by :func:`agentmesh.trust.check_certificate`;
* a server holding x's certificate with b's name as a DNS SAN passes gRPC's name check when dialled as b, and
  the mesh channel refuses it (its SPIFFE ID is x's), while the real b is served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from support import TD, EchoAgent, identity_dir, new_ca, raw_channel, task, utc

from agentmesh.errors import PeerIdentityError, Unavailable
from agentmesh.identity import SpiffeId
from agentmesh.interceptors.audit import AuditStage
from agentmesh.interceptors.base import ServerChain
from agentmesh.interceptors.identity import PeerIdentityCache, PeerIdentityStage
from agentmesh.pki import CertificateAuthority
from agentmesh.pki.certs import CertProfile, build_certificate, dump_cert, leaf_profile, new_key
from agentmesh.runtime.channel import MeshChannels
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.server import MeshServer
from agentmesh.trust import check_certificate
from agentmesh.v1 import agent_pb2, agent_pb2_grpc


def write_leaf(ca: CertificateAuthority, out: Path, name: str, *, key: Any = None, dns: tuple[str, ...] | None = None,
               issuer: x509.Certificate | None = None, issuer_key: Any = None,
               chain: tuple[x509.Certificate, ...] | None = None) -> Path:
    """An identity directory whose leaf the real issuing CA signed (or ``issuer``), with one property bent."""
    now = time.time()
    key = key or new_key()
    cert = build_certificate(subject_cn=name, subject_key=key.public_key(),
                             profile=leaf_profile(SpiffeId(TD, f"/agent/{name}"), dns if dns is not None else (name,)),
                             not_before=utc(now - 60), not_after=utc(now + 3600),
                             issuer_cert=issuer or ca.cert, issuer_key=issuer_key or ca.key)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cert.pem").write_bytes(dump_cert(cert, *(chain if chain is not None else (ca.cert,))))
    (out / "key.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (out / "bundle.pem").write_bytes(ca.bundle)
    return out


def self_issued_chain(ca: CertificateAuthority, out: Path, name: str) -> Path:
    """The attack: a CA:TRUE certificate with the issuing CA's own subject, signed by it, signs the leaf."""
    now = time.time()
    x_key = new_key()
    cn = str(ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    profile = CertProfile(True, None, frozenset({"key_cert_sign", "digital_signature"}), (), (), ())
    x = build_certificate(subject_cn=cn, subject_key=x_key, profile=profile,
                          not_before=utc(now - 60), not_after=utc(now + 3600), issuer_cert=ca.cert, issuer_key=ca.key)
    return write_leaf(ca, out, name, issuer=x, issuer_key=x_key, chain=(x, ca.cert))


class Server:
    def __init__(self, server: MeshServer, agent: EchoAgent, address: str) -> None:
        self.server, self.agent, self.address = server, agent, address


async def serve(identity_path: Path, *, chain: bool = True, agent: Any = None) -> Server:
    ident = AgentIdentity(identity_path, TD, check_every=0)
    interceptors = [ServerChain(AuditStage("b", None), [PeerIdentityStage(PeerIdentityCache(TD))])] if chain else []
    server = MeshServer(ident, interceptors=interceptors, grace=0.1)
    agent = agent or EchoAgent()
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, agent, "agentmesh.v1.Agent")
    port = await server.start("127.0.0.1:0")
    return Server(server, agent, f"127.0.0.1:{port}")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return new_ca(tmp_path)


@pytest.fixture
async def b(ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[Server]:
    s = await serve(identity_dir(ca, tmp_path, "b"))
    yield s
    await s.server.stop(0)


async def invoke(address: str, cert_dir: Path, ca: CertificateAuthority) -> agent_pb2.TaskResult:
    ch = raw_channel(address, "b", bundle=ca.bundle, cert_dir=cert_dir)
    try:
        return await agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=5)
    finally:
        await ch.close()


# ---------------------------------------------------------------- weak client keys
async def test_rsa_1024_client_certificate_is_refused(ca: CertificateAuthority, b: Server, tmp_path: Path) -> None:
    honest = write_leaf(ca, tmp_path / "p256", "a")
    assert (await invoke(b.address, honest, ca)).output[0].text == f"spiffe://{TD}/agent/a"
    assert b.agent.calls == 1
    weak = write_leaf(ca, tmp_path / "rsa1024", "a", key=rsa.generate_private_key(65537, 1024))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await invoke(b.address, weak, ca)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # TLS let it through; the identity stage refuses
    assert "too weak" in (err.value.details() or "")
    assert b.agent.calls == 1, "the handler must not run for a weak key"


async def test_rsa_2048_client_certificate_still_passes(ca: CertificateAuthority, b: Server, tmp_path: Path) -> None:
    ok = write_leaf(ca, tmp_path / "rsa2048", "a", key=rsa.generate_private_key(65537, 2048))
    assert (await invoke(b.address, ok, ca)).output[0].text == f"spiffe://{TD}/agent/a"


# ---------------------------------------------------------------- a leaf under a self-issued CA:TRUE certificate
class ChainRecorder(agent_pb2_grpc.AgentServicer):
    """Checks the caller as a server can from its auth context: the leaf and the chain it presented."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.verdicts: list[str] = []

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        auth = context.auth_context()
        leaf = x509.load_pem_x509_certificate(auth["x509_pem_cert"][0])
        presented = x509.load_pem_x509_certificates(b"".join(auth.get("x509_pem_cert_chain", [])))
        try:
            peer = check_certificate(leaf, (), TD, time.time(), roots=(self.ca.root,), presented=presented)
            self.verdicts.append(peer.uri)
        except PeerIdentityError as e:
            self.verdicts.append(f"refused: {e}")
        return agent_pb2.TaskResult(task_id=request.id)


async def test_leaf_under_a_self_issued_ca_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    recorder = ChainRecorder(ca)
    s = await serve(identity_dir(ca, tmp_path, "b"), chain=False, agent=recorder)
    try:
        await invoke(s.address, write_leaf(ca, tmp_path / "honest", "a"), ca)
        await invoke(s.address, self_issued_chain(ca, tmp_path / "attack", "a"), ca)  # TLS lets it through
    finally:
        await s.server.stop(0)
    assert recorder.verdicts[0] == f"spiffe://{TD}/agent/a"
    assert recorder.verdicts[1] == "refused: certificate is not issued by an issuing CA of this mesh"


# ---------------------------------------------------------------- the server is the agent dialled
async def call_b(channels: MeshChannels) -> agent_pb2.TaskResult:
    return await channels.stub("b", agent_pb2_grpc.AgentStub).Invoke(task("hi"), timeout=5)


async def test_server_with_bs_name_as_dns_but_xs_identity_is_refused(ca: CertificateAuthority, b: Server,
                                                                       tmp_path: Path) -> None:
    a = AgentIdentity(identity_dir(ca, tmp_path, "a"), TD)
    honest = MeshChannels(a, {"b": b.address})
    try:  # without the attack: b is served
        assert (await call_b(honest)).output[1].text == "hi"
        assert b.agent.calls == 1
    finally:
        await honest.close()
    # the attack: x's certificate (signed by the real CA before issuance refused this) carries DNS name b
    imposter = await serve(write_leaf(ca, tmp_path / "x", "x", dns=("x", "b")))
    channels = MeshChannels(a, {"b": imposter.address})
    try:
        # gRPC alone accepts it as b (only the DNS SAN is checked)
        ch = raw_channel(imposter.address, "b", bundle=ca.bundle, cert_dir=a.dir)
        try:
            await agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=5)
        finally:
            await ch.close()
        assert imposter.agent.calls == 1
        for _ in range(3):  # the first call waits for the check; later ones are refused at once
            with pytest.raises(Unavailable, match=f"presents spiffe://{TD}/agent/x, not agent b"):
                await call_b(channels)
        assert imposter.agent.calls == 1, "no mesh call may reach the imposter"
    finally:
        await channels.close()
        await imposter.server.stop(0)


async def test_a_server_checked_once_per_connection(ca: CertificateAuthority, b: Server, tmp_path: Path) -> None:
    """The check costs one probe per connection, not one per call; concurrent first calls share it."""
    a = AgentIdentity(identity_dir(ca, tmp_path, "a"), TD)
    channels = MeshChannels(a, {"b": b.address})
    try:
        results = await asyncio.gather(*(call_b(channels) for _ in range(10)))
        assert all(r.output[1].text == "hi" for r in results)
        first = channels._checks["b"][1]
        await call_b(channels)
        assert channels._checks["b"][1] is first
    finally:
        await channels.close()


async def test_the_server_chain_refuses_a_leaf_under_a_self_issued_ca_certificate(tmp_path: Path) -> None:
    """The whole server chain of a running mesh (its identity stage has the trust snapshot): the attack chain
    is refused at the identity stage, while the honest leaf gets past it (to the token stage: no token here)."""
    from meshkit import running_mesh

    async with running_mesh(tmp_path, {"b": {}}) as m:
        address = m.config.agents["b"].address
        outcomes = []
        for cert_dir in (write_leaf(m.ca, tmp_path / "honest", "a"), self_issued_chain(m.ca, tmp_path / "attack", "a")):
            ch = raw_channel(address, "b", bundle=m.ca.bundle, cert_dir=cert_dir)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=5)
                outcomes.append((e.value.code(), e.value.details() or ""))
            finally:
                await ch.close()
    (honest_code, honest), (attack_code, attack) = outcomes
    assert honest_code == attack_code == grpc.StatusCode.UNAUTHENTICATED
    assert "token" in honest and "issuing CA" not in honest  # past the certificate checks
    assert "not issued by an issuing CA of this mesh" in attack
