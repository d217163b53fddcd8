"""Automatic renewal: members renew at about half their certificate's life, with a key born locally,
under steady traffic, across an intermediate rotation, with zero failed calls; Renew refuses anything
but the caller's own identity, and a revoked caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshkit import Mesh, free_port, running_mesh
from support import TD, task

from agentmesh.identity import SpiffeId
from agentmesh.interceptors.client import delegating
from agentmesh.pki.certs import new_key
from agentmesh.pki.csr import make_csr
from agentmesh.runtime.renewal import backoff, renewal_due
from agentmesh.v1 import agent_pb2_grpc, control_pb2, control_pb2_grpc

AGENTS = {"ingestor": {"roles": ["ingestor"]}, "summarizer": {"roles": ["summarizer"]}}
POLICY = [
    {"name": "client-starts", "action": "allow", "to": ["ingestor"], "roles": ["client"], "via": ["bridge"]},
    {"name": "ingestor-delegates", "action": "allow", "to": ["summarizer"], "roles": ["client"], "via": ["ingestor"]},
]
LIFETIME = 4.0  # seconds: three lifetimes of traffic take ~12 s


@pytest.mark.parametrize(("start", "not_after", "rand", "due"), [
    (100.0, 200.0, 0.5, 150.0),  # half the life
    (100.0, 200.0, 0.0, 140.0),  # jitter: -10% of the life
    (100.0, 200.0, 1.0, 160.0),  # +10%
    (100.0, 90.0, 0.5, 100.0),  # already expired: now
])
def test_renewal_due(start: float, not_after: float, rand: float, due: float) -> None:
    assert renewal_due(start, not_after, rand=rand) == pytest.approx(due)


@pytest.mark.parametrize(("attempt", "rand", "delay"), [(1, 1.0, 0.4), (3, 1.0, 1.6), (30, 1.0, 5.0), (30, 0.0, 0.0)])
def test_backoff_grows_to_a_cap_with_jitter(attempt: int, rand: float, delay: float) -> None:
    assert backoff(attempt, base=0.2, cap=5.0, rand=rand) == pytest.approx(delay)


def control_section(**extra: Any) -> dict[str, Any]:
    return {"address": f"127.0.0.1:{free_port()}", **extra}


@pytest.fixture
async def short_lived(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, AGENTS, policy=POLICY, leaf_ttl=LIFETIME, tokens={"revocation_refresh": "1s"},
                            control=control_section(cert_ttl=f"{LIFETIME:.0f}s")) as m:
        yield m


@pytest.mark.slow  # a long run: under CI=true (see tests/conftest.py)
async def test_steady_traffic_through_three_lifetimes_and_a_rotation_with_zero_failed_calls(
        short_lived: Mesh) -> None:
    mesh = short_lived
    members = {name: mesh.nodes[name] for name in ("bridge", "ingestor", "summarizer")}
    serials: dict[str, set[int]] = {name: set() for name in [*members, "control"]}
    stub = mesh.nodes["bridge"].stub("ingestor", agent_pb2_grpc.AgentStub)
    token = await mesh.txn(mesh.client_token())  # the bridge exchanged it: the bridge makes the calls
    ok = failed = 0
    errors: list[str] = []
    rotated = False
    started = time.monotonic()
    while time.monotonic() - started < 3 * LIFETIME or min(len(s) for s in serials.values()) < 3:
        assert time.monotonic() - started < 12 * LIFETIME, f"renewals seen: {serials}"
        if not rotated and time.monotonic() - started > 1.5 * LIFETIME:
            await asyncio.to_thread(mesh.ca.rotate)  # the intermediate changes under traffic
            rotated = True
        with delegating(token):
            try:
                res = await stub.Invoke(_onward(), timeout=5)
                assert "summarizer:" in res.output[-1].text
                ok += 1
            except grpc.aio.AioRpcError as e:
                failed += 1
                errors.append(f"{e.code().name}: {e.details()}")
        for name, node in members.items():
            serials[name].add(node.identity.files.leaf.serial_number)
        serials["control"].add(mesh.control.server.identity.files.leaf.serial_number)
    assert failed == 0, errors[:5]
    assert ok > 50
    for name, seen in serials.items():
        assert len(seen) >= 3, f"{name}'s certificate was renewed {len(seen) - 1} time(s)"
    # certificates renewed after the rotation are issued by the new intermediate
    assert members["ingestor"].identity.files.chain[0] == mesh.ca.cert


def _onward() -> Any:
    t = task()
    t.metadata["next"] = "summarizer"
    return t


async def renew_call(mesh: Mesh, member: str, csr: bytes) -> control_pb2.IssuedIdentity:
    node = mesh.nodes[member]
    channel = node._control_for(node.identity.files)[0]
    return await control_pb2_grpc.IdentityServiceStub(channel).Renew(
        control_pb2.CertificateSigningRequest(csr_pem=csr), timeout=5)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, AGENTS, policy=POLICY) as m:
        yield m


async def test_renew_issues_only_the_callers_own_identity(mesh: Mesh) -> None:
    own = await renew_call(mesh, "ingestor", make_csr(new_key(), SpiffeId.for_agent(TD, "ingestor")))
    assert b"BEGIN CERTIFICATE" in own.cert_chain_pem and own.bundle_pem == mesh.ca.bundle
    for csr in (make_csr(new_key(), SpiffeId.for_agent(TD, "summarizer")),  # another member
                make_csr(new_key(), SpiffeId.for_agent("evil.org", "ingestor")),  # another trust domain
                b"not a csr"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await renew_call(mesh, "ingestor", csr)
        assert refused.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)


async def test_a_revoked_member_cannot_renew_itself_back(mesh: Mesh) -> None:
    csr = make_csr(new_key(), SpiffeId.for_agent(TD, "summarizer"))
    await renew_call(mesh, "summarizer", csr)  # works before
    mesh.ca.revoke("summarizer")
    await mesh.nodes["ingestor"].wait_for_trust(lambda t: "summarizer" in t.revoked_members)
    # (the control plane updates its own trust data before it pushes the change to members)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await renew_call(mesh, "summarizer", make_csr(new_key(), SpiffeId.for_agent(TD, "summarizer")))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in refused.value.details()


async def test_a_certificate_revoked_a_moment_ago_cannot_renew_even_before_members_hear_of_it(mesh: Mesh) -> None:
    """The race the adversarial review found: Renew decides under the CA lock on the CA's index, not on the
    control plane's (0.25 s old) snapshot, and what a certificate renewed into is revoked with it."""
    node = mesh.nodes["summarizer"]
    held = node.identity.files.leaf.serial_number
    renewed = await renew_call(mesh, "summarizer", make_csr(new_key(), SpiffeId.for_agent(TD, "summarizer")))
    mesh.ca.revoke(format(held, "x"))  # no waiting for the trust stream
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await renew_call(mesh, "summarizer", make_csr(new_key(), SpiffeId.for_agent(TD, "summarizer")))
    assert refused.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED)
    from cryptography import x509
    child = x509.load_pem_x509_certificate(renewed.cert_chain_pem).serial_number
    status = {e.serial: e.revoked_at is not None for e in mesh.ca.entries()}
    assert status[held] and status[child], "a stolen key must not fork the identity through renewal"


@pytest.mark.slow  # a long run: under CI=true (see tests/conftest.py)
async def test_a_root_rollover_under_traffic(short_lived: Mesh) -> None:
    """ca rollover: members adopt the new root (vouched for by the old one) from the trust stream, renew
    into it; ca rollover --finish: they drop the old one; no call fails on the way."""
    mesh = short_lived
    stub = mesh.nodes["bridge"].stub("ingestor", agent_pb2_grpc.AgentStub)
    token = await mesh.txn(mesh.client_token())  # the bridge exchanged it: the bridge makes the calls
    failed: list[str] = []
    ok = 0

    async def traffic(seconds: float) -> None:
        nonlocal ok
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            with delegating(token):
                try:
                    await stub.Invoke(_onward(), timeout=5)
                    ok += 1
                except grpc.aio.AioRpcError as e:
                    failed.append(f"{e.code().name}: {e.details()}")

    await traffic(LIFETIME / 2)
    new_root = await asyncio.to_thread(mesh.ca.rollover)
    for node in mesh.nodes.values():
        await node.wait_for_trust(lambda t: t.bundle == mesh.ca.bundle)
    while mesh.ca.rollover_started() is not None:  # the control plane lets the new root issue by itself
        await traffic(0.2)
    await traffic(2 * LIFETIME)  # everyone renews into the new root meanwhile
    for node in mesh.nodes.values():
        node.identity.files.chain[0].verify_directly_issued_by(new_root)  # renewed under the new root
    await asyncio.to_thread(mesh.ca.finish_rollover)
    for node in mesh.nodes.values():
        await node.wait_for_trust(lambda t: t.bundle == mesh.ca.bundle)
    await traffic(LIFETIME)
    assert not failed, failed[:5]
    assert ok > 20
    for node in mesh.nodes.values():
        assert node.identity.files.bundle == mesh.ca.bundle  # written to bundle.pem: a restart keeps it


async def test_renewing_one_certificate_twice_revokes_the_first_successor(mesh: Mesh) -> None:
    """A thief holding a copy of a member's key cannot fork its identity quietly: a second renewal from the
    same certificate revokes the first successor (the owner's, or the thief's), and the fork shows."""
    from cryptography import x509

    first = await renew_call(mesh, "summarizer", make_csr(new_key(), SpiffeId.for_agent(TD, "summarizer")))
    second = await renew_call(mesh, "summarizer", make_csr(new_key(), SpiffeId.for_agent(TD, "summarizer")))
    entries = {e.serial: e for e in mesh.ca.entries()}
    one = entries[x509.load_pem_x509_certificate(first.cert_chain_pem).serial_number]
    two = entries[x509.load_pem_x509_certificate(second.cert_chain_pem).serial_number]
    assert one.revoked_at is not None and "superseded" in (one.reason or "")
    assert two.revoked_at is None


async def test_a_certificate_holder_the_config_does_not_name_cannot_renew(mesh: Mesh) -> None:
    """'outsider' holds a valid certificate of this CA but is no member of the mesh config: no renewal."""
    from agentmesh.runtime.channel import secure_channel
    from agentmesh.runtime.credentials import AgentIdentity

    outsider = AgentIdentity(mesh.config.identity_dir("outsider"), TD)
    channel = secure_channel(outsider, mesh.config.control.address, mesh.config.control.name)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await control_pb2_grpc.IdentityServiceStub(channel).Renew(
                control_pb2.CertificateSigningRequest(csr_pem=make_csr(new_key(), SpiffeId.for_agent(TD, "outsider"))),
                timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not a member" in refused.value.details()
    finally:
        await channel.close()
    await renew_call(mesh, "ingestor", make_csr(new_key(), SpiffeId.for_agent(TD, "ingestor")))  # a member can


async def test_a_member_never_adopts_a_bundle_without_its_own_root(mesh: Mesh) -> None:
    from agentmesh.pki.certs import dump_cert

    node = mesh.nodes["ingestor"]
    new_root = mesh.ca.rollover()
    assert node._chains_to(mesh.ca.bundle)  # old + new root: its certificate still chains
    assert not node._chains_to(dump_cert(new_root))  # the new root alone would cut it off: refused


def test_a_restarted_control_plane_does_not_let_a_new_root_issue_before_members_heard_of_it(tmp_path: Path) -> None:
    import os

    from agentmesh.pki import CertificateAuthority
    from agentmesh.runtime.publisher import TrustPublisher

    async def run() -> None:
        ca = CertificateAuthority.init(tmp_path / "ca", TD)
        ca.rollover()
        long_ago = time.time() - 3600  # the rollover began while the control plane was down
        os.utime(ca.dir / "next" / "ca.pem", (long_ago, long_ago))
        publisher = TrustPublisher(ca, jwks_json="", issuer="", heartbeat=5.0)
        publisher.refresh()
        assert ca.rollover_started() is not None, "activated before any member could receive the new root"
        publisher._up_since -= 11  # two heartbeats (and a poll) after it came back: now it may
        publisher.refresh()
        assert ca.rollover_started() is None

    asyncio.run(run())
