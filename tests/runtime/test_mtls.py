"""mTLS between agents: the right peer gets through and sees its SPIFFE ID; every imposter FAILS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from support import TD, EchoAgent, custom_leaf, identity_dir, new_ca, raw_channel, task

from agentmesh.interceptors.audit import AuditStage
from agentmesh.interceptors.base import ServerChain
from agentmesh.interceptors.identity import PeerIdentityCache, PeerIdentityStage
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.runtime.channel import MeshChannels
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.publisher import TrustPublisher
from agentmesh.runtime.server import MeshServer
from agentmesh.runtime.truststate import TrustState
from agentmesh.trust import RevocationPolicy
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

REFUSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED}


@dataclass
class Mesh:
    root: Path
    ca: CertificateAuthority
    server: MeshServer
    agent: EchoAgent
    address: str
    b_identity: AgentIdentity
    publisher: TrustPublisher
    trust: TrustState

    def revoke(self, name: str) -> None:
        """Revokes ``name`` in the CA and hands b the new trust data (what the control plane streams)."""
        self.ca.revoke(name)
        assert self.publisher.refresh()
        self.trust.update(self.publisher.snapshot)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    ca = new_ca(tmp_path)
    b_dir = identity_dir(ca, tmp_path, "b")
    ident = AgentIdentity(b_dir, TD, check_every=0)
    publisher = TrustPublisher(ca, jwks_json="", issuer="")
    trust = TrustState(RevocationPolicy())
    trust.update(publisher.snapshot)
    chain = [ServerChain(AuditStage("b", None), [PeerIdentityStage(PeerIdentityCache(TD, trust=trust))])]
    server = MeshServer(ident, interceptors=chain, grace=0.5)
    agent = EchoAgent()
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, agent, "agentmesh.v1.Agent")
    port = await server.start("127.0.0.1:0")
    yield Mesh(tmp_path, ca, server, agent, f"127.0.0.1:{port}", ident, publisher, trust)
    await server.stop(0)


async def call_with(mesh: Mesh, cert_dir: Path | None, *, server_name: str = "b", bundle: bytes | None = None):
    ch = raw_channel(mesh.address, server_name, bundle=bundle or mesh.ca.bundle, cert_dir=cert_dir)
    try:
        return await agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=5)
    finally:
        await ch.close()


async def assert_refused(mesh: Mesh, cert_dir: Path | None, **kw: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call_with(mesh, cert_dir, **kw)  # type: ignore[arg-type]
    assert err.value.code() in REFUSED, err.value
    assert mesh.agent.calls == 0, "the handler must never run for a refused peer"
    return err.value.code()


async def test_agent_a_calls_b_and_b_sees_a(mesh: Mesh) -> None:
    a = AgentIdentity(identity_dir(mesh.ca, mesh.root, "a"), TD)
    channels = MeshChannels(a, {"b": mesh.address})
    try:
        res = await channels.stub("b", agent_pb2_grpc.AgentStub).Invoke(task("hi"), timeout=5)
        assert res.output[0].text == f"spiffe://{TD}/agent/a"
        assert res.output[1].text == "hi"
        events = [e async for e in channels.stub("b", agent_pb2_grpc.AgentStub).InvokeStream(task(), timeout=5)]
        assert events[0].progress == f"0:spiffe://{TD}/agent/a"
        assert events[-1].HasField("result")
    finally:
        await channels.close()


async def test_a_mesh_channel_is_a_grpc_aio_channel(mesh: Mesh) -> None:
    """What takes a grpc.aio.Channel (generated stubs, the a2a-sdk's transports) takes a mesh channel: it
    is one, and its multicallable factories take grpc.aio's arguments, the serializers positionally too."""
    a = AgentIdentity(identity_dir(mesh.ca, mesh.root, "a"), TD)
    channels = MeshChannels(a, {"b": mesh.address})
    try:
        channel = channels.channel("b")
        assert isinstance(channel, grpc.aio.Channel)
        invoke = channel.unary_unary("/agentmesh.v1.Agent/Invoke", agent_pb2.Task.SerializeToString,
                                     agent_pb2.TaskResult.FromString)
        res = await invoke(task("hi"), timeout=5)
        assert [p.text for p in res.output] == [f"spiffe://{TD}/agent/a", "hi"]
    finally:
        await channels.close()


async def test_no_client_certificate(mesh: Mesh) -> None:
    await assert_refused(mesh, None)


async def test_self_signed_certificate(mesh: Mesh) -> None:
    await assert_refused(mesh, custom_leaf(mesh.ca, mesh.root / "selfsigned", "a", self_signed=True))


async def test_rogue_ca_claiming_the_same_trust_domain(mesh: Mesh) -> None:
    rogue = CertificateAuthority.init(mesh.root / "rogue-ca", TD)
    out = mesh.root / "rogue-a"
    write_identity(rogue.issue("a"), out)
    await assert_refused(mesh, out)


async def test_certificate_of_another_trust_domain(mesh: Mesh) -> None:
    # signed by the very issuing CA, but naming a foreign trust domain: refused by the identity stage
    code = await assert_refused(mesh, custom_leaf(mesh.ca, mesh.root / "foreign", "a", trust_domain="evil.org"))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_expired_certificate(mesh: Mesh) -> None:
    now = time.time()
    await assert_refused(mesh, custom_leaf(mesh.ca, mesh.root / "expired", "a",
                                           not_before=now - 7200, not_after=now - 3600))


async def test_not_yet_valid_certificate(mesh: Mesh) -> None:
    now = time.time()
    await assert_refused(mesh, custom_leaf(mesh.ca, mesh.root / "future", "a",
                                           not_before=now + 3600, not_after=now + 7200))


async def test_revoked_certificate_is_refused_without_restart(mesh: Mesh) -> None:
    a_dir = identity_dir(mesh.ca, mesh.root, "a")
    await call_with(mesh, a_dir)  # works before revocation
    mesh.agent.calls = 0
    mesh.revoke("a")
    code = await assert_refused(mesh, a_dir)
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_server_auth_only_leaf(mesh: Mesh) -> None:
    await assert_refused(mesh, custom_leaf(mesh.ca, mesh.root / "srv-only", "a",
                                           eku=(ExtendedKeyUsageOID.SERVER_AUTH,)))


async def test_ca_certificate_used_as_leaf(mesh: Mesh) -> None:
    await assert_refused(mesh, custom_leaf(mesh.ca, mesh.root / "ca-leaf", "a", is_ca=True))


async def test_plaintext_to_the_tls_port(mesh: Mesh) -> None:
    ch = grpc.aio.insecure_channel(mesh.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await ch.close()
    assert mesh.agent.calls == 0


async def test_client_verifies_the_server_name(mesh: Mesh) -> None:
    """Agent c's certificate is valid, but it is not b: a client dialing 'c' at b's address refuses."""
    a_dir = identity_dir(mesh.ca, mesh.root, "a")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call_with(mesh, a_dir, server_name="c")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_replaced_on_disk_is_used_without_restart(mesh: Mesh) -> None:
    a_dir = identity_dir(mesh.ca, mesh.root, "a")
    first = mesh.b_identity.files.leaf.serial_number
    new = mesh.ca.issue("b")
    write_identity(new, mesh.b_identity.dir)
    # a fresh connection handshakes with the new certificate
    ch = raw_channel(mesh.address, "b", bundle=mesh.ca.bundle, cert_dir=a_dir)
    try:
        await agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=5)
    finally:
        await ch.close()
    assert mesh.b_identity.files.leaf.serial_number == new.serial != first
    served = await _served_serial(mesh, a_dir)
    assert served == new.serial


async def _served_serial(mesh: Mesh, a_dir: Path) -> int:
    import ssl

    from cryptography import x509

    host, port = mesh.address.rsplit(":", 1)
    ctx = ssl.create_default_context(cadata=mesh.ca.bundle.decode())
    ctx.check_hostname = False
    ctx.load_cert_chain(a_dir / "cert.pem", a_dir / "key.pem")
    ctx.set_alpn_protocols(["h2"])
    import asyncio

    _, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="b")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number




def test_half_written_rotation_keeps_the_last_good_identity(tmp_path: Path) -> None:
    """A reader that sees the new key beside the old certificate keeps serving the old pair."""
    ca = new_ca(tmp_path)
    ident = AgentIdentity(identity_dir(ca, tmp_path, "b"), TD, check_every=0)
    first = ident.files.thumbprint
    newer = ca.issue("b")
    (ident.dir / "key.pem").write_bytes(newer.key_pem)  # the cert is not written yet
    assert ident.files.thumbprint == first and ident.version == 0
    (ident.dir / "cert.pem").write_bytes(newer.cert_pem)
    assert ident.files.thumbprint != first and ident.version == 1


async def test_health_needs_no_token_but_a_revoked_peer_gets_nothing(mesh: Mesh) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    a_dir = identity_dir(mesh.ca, mesh.root, "a")

    async def check() -> int:
        ch = raw_channel(mesh.address, "b", bundle=mesh.ca.bundle, cert_dir=a_dir)
        try:
            res = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return int(res.status)
        finally:
            await ch.close()

    assert await check() == health_pb2.HealthCheckResponse.SERVING
    mesh.revoke("a")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.value.details()


def test_a_cached_peer_is_refused_once_its_certificate_expires(tmp_path: Path) -> None:
    """Long-lived connections: a certificate that was valid at the handshake stops working at expiry."""
    from agentmesh.clock import FakeClock
    from agentmesh.errors import PeerIdentityError

    ca = new_ca(tmp_path)
    issued = ca.issue("a", ttl=3600)
    clock = FakeClock(time.time())
    cache = PeerIdentityCache(TD, clock=clock)
    pem = issued.cert_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    assert cache.identify(pem).name == "a"
    clock.advance(3601)
    with pytest.raises(PeerIdentityError, match="expired"):
        cache.identify(pem)


def test_a_member_identity_must_name_that_member(tmp_path: Path) -> None:
    from agentmesh.configfile import parse_config
    from agentmesh.errors import PKIError
    from agentmesh.runtime.credentials import member_identity

    ca = new_ca(tmp_path)
    write_identity(ca.issue("b"), tmp_path / "identities" / "a")  # b's certificate where a's belongs
    config = parse_config({"trust_domain": TD, "identities": "identities", "agents": {}}, tmp_path)
    with pytest.raises(PKIError, match=r"agent/b, not spiffe://example\.org/agent/a$"):
        member_identity(config, "a")
