"""``audit.required`` on the control plane: while its required exporter is down it issues nothing (no
certificate, token, signed card or join) but keeps distributing trust (WatchTrust), so revocations still
reach the members. A real control plane and its join port on real sockets; the exporter is down because its
disk is full (``/dev/full``), and the same calls with a writable log are served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from meshkit import free_port, write_mesh
from support import TD, raw_channel

from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.identity import SpiffeId
from agentmesh.interceptors.chain import AUDIT_REQUIRED_EXEMPT
from agentmesh.pki import CertificateAuthority
from agentmesh.pki.certs import new_key
from agentmesh.pki.csr import make_csr
from agentmesh.pki.join import JoinRefused, JoinTokens
from agentmesh.runtime.control import ControlPlane, start_control
from agentmesh.tokens import TokenAuthority
from agentmesh.v1 import control_pb2, control_pb2_grpc

CARD = Path(__file__).parents[2] / "examples" / "a2a" / "card.json"
#: every control-plane method, and whether it is served while the required exporter is down
SERVED_WHILE_DOWN = {
    "/agentmesh.v1.IdentityService/WatchTrust": True,  # read-only: revocations must keep flowing
    "/agentmesh.v1.IdentityService/Renew": False,  # a certificate
    "/agentmesh.v1.TokenService/IssueAgentToken": False,  # an agent token
    "/agentmesh.v1.TokenService/ExchangeTransactionToken": False,  # a transaction token (and its narrowing)
    "/agentmesh.v1.TokenService/SignAgentCard": False,  # a signed card
    "/agentmesh.v1.JoinService/Join": False,  # a certificate, on the join port
}


def test_every_control_method_has_a_decision() -> None:
    """A new control-plane method must be put in the table (and so in or out of the exemption) knowingly."""
    methods = {f"/{service.full_name}/{m.name}" for service in control_pb2.DESCRIPTOR.services_by_name.values()
               for m in service.methods}
    assert methods == set(SERVED_WHILE_DOWN)


@pytest.mark.parametrize("method", sorted(SERVED_WHILE_DOWN))
def test_only_the_read_only_trust_distribution_is_exempt(method: str) -> None:
    assert (method in AUDIT_REQUIRED_EXEMPT) is SERVED_WHILE_DOWN[method]


@dataclass
class Control:
    plane: ControlPlane
    config: MeshConfig
    authority: TokenAuthority
    channel: grpc.aio.Channel  # as the bridge, over mTLS


@pytest.fixture(params=["writable", "disk-full"])
async def control(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Control]:
    log = "audit.jsonl" if request.param == "writable" else "/dev/full"
    path = write_mesh(tmp_path, {"ingestor": {"roles": ["ingestor"], "a2a": {"card": str(CARD)}}},
                      control={"address": f"127.0.0.1:{free_port()}", "join_address": f"127.0.0.1:{free_port()}"},
                      audit={"exporters": ["jsonl"], "jsonl_path": log, "required": True})
    config = load_config(path)
    plane = await start_control(config)
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    channel = raw_channel(config.control.address, "control", bundle=(config.ca_dir / "bundle.pem").read_bytes(),
                          cert_dir=config.identity_dir("bridge"))
    try:
        yield Control(plane, config, authority, channel)
    finally:
        await channel.close()
        await plane.stop(0)
        plane.sink.shutdown(2)


def client_token(c: Control) -> str:
    return c.authority.issue(sub="alice@example.org", roles=["client"], audience=c.config.tokens.audience, ttl=600)


async def exchange(c: Control) -> control_pb2.TransactionToken:
    stub = control_pb2_grpc.TokenServiceStub(c.channel)
    return await stub.ExchangeTransactionToken(
        control_pb2.TransactionTokenRequest(subject_token=client_token(c), route="test"), timeout=5)


async def call(c: Control, method: str) -> grpc.StatusCode:
    """``method`` called as a member would call it: its status (WatchTrust: OK once an update arrived)."""
    tokens = control_pb2_grpc.TokenServiceStub(c.channel)
    identity = control_pb2_grpc.IdentityServiceStub(c.channel)
    try:
        if method.endswith("/WatchTrust"):
            stream = identity.WatchTrust(control_pb2.WatchTrustRequest(), timeout=5)
            try:
                update = await stream.read()
                assert isinstance(update, control_pb2.TrustUpdate)
            finally:
                stream.cancel()
        elif method.endswith("/Renew"):
            csr = make_csr(new_key(), SpiffeId.for_agent(TD, "bridge"))
            await identity.Renew(control_pb2.CertificateSigningRequest(csr_pem=csr), timeout=5)
        elif method.endswith("/IssueAgentToken"):
            await tokens.IssueAgentToken(control_pb2.AgentTokenRequest(), timeout=5)
        elif method.endswith("/ExchangeTransactionToken"):
            await exchange(c)
        elif method.endswith("/SignAgentCard"):
            await tokens.SignAgentCard(control_pb2.AgentCardRequest(agent="ingestor"), timeout=5)
        else:
            token = JoinTokens(c.config.ca_dir).create("ingestor")
            csr = make_csr(new_key(), SpiffeId.for_agent(TD, "ingestor"))
            creds = grpc.ssl_channel_credentials(root_certificates=(c.config.ca_dir / "bundle.pem").read_bytes())
            assert c.config.control.join_address is not None
            async with grpc.aio.secure_channel(c.config.control.join_address, creds,
                                               options=[("grpc.ssl_target_name_override", "control")]) as ch:
                await control_pb2_grpc.JoinServiceStub(ch).Join(control_pb2.JoinRequest(join_token=token, csr_pem=csr),
                                                                timeout=5)
            with pytest.raises(JoinRefused):  # a join served spends its token
                JoinTokens(c.config.ca_dir).check(token)
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            assert "audit" in (e.details() or ""), e.details()
            if method.endswith("/Join"):  # refused before the handler: the token is still good
                assert JoinTokens(c.config.ca_dir).check(token).name == "ingestor"
        return e.code()
    return grpc.StatusCode.OK


async def test_the_control_plane_issues_nothing_unaudited_but_still_distributes_trust(control: Control) -> None:
    await exchange(control)  # served: the exporter has not failed yet
    control.plane.sink.force_flush(5)  # that exchange's span is written, or fails to be (the disk is full)
    down = not control.plane.sink.available()
    assert down == (control.config.audit.jsonl_path == Path("/dev/full"))
    codes = {method: await call(control, method) for method in SERVED_WHILE_DOWN}
    expected = {m: grpc.StatusCode.OK if served or not down else grpc.StatusCode.UNAVAILABLE
                for m, served in SERVED_WHILE_DOWN.items()}
    assert codes == expected


async def test_a_revocation_reaches_the_members_with_the_exporter_down_too(control: Control) -> None:
    await exchange(control)  # (disk-full: the exporter fails with it)
    control.plane.sink.force_flush(5)
    stream = control_pb2_grpc.IdentityServiceStub(control.channel).WatchTrust(control_pb2.WatchTrustRequest(),
                                                                            timeout=30)
    try:
        await stream.read()  # the snapshot at once
        CertificateAuthority.load(control.config.ca_dir).revoke("ingestor")  # the operator revokes a member
        while True:
            update = await asyncio.wait_for(stream.read(), 20)
            assert isinstance(update, control_pb2.TrustUpdate)
            if "ingestor" in control_pb2.TrustContent.FromString(update.content).revoked_members:
                break
    finally:
        stream.cancel()
    assert (await call(control, "/agentmesh.v1.TokenService/IssueAgentToken")
            == (grpc.StatusCode.UNAVAILABLE if not control.plane.sink.available() else grpc.StatusCode.OK))
