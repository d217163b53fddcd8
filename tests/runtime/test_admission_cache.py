"""The admission stage reuses an admitted call's decision for the same credentials, and never once what it
relied on changed: each attack below is made with exactly the credentials of a call that was just
admitted (and whose decision is cached), after one change; it FAILS, exactly as it does on a member
that never cached anything, while the same call before the change (and an unaffected caller after it)
gets through.

Real certificates from the mesh CA, real tokens from the control plane's authority, real trust data
(what the control plane streams); the stage is driven with a servicer context that answers
``auth_context()`` as grpc.aio does for a verified mTLS peer. Delegated calls (a revoked client
token ending its transactions, a revoked hop) through real sockets, each after the same call was
admitted: tests/integration/test_chain.py, test_delegation_attacks.py, tests/lifecycle/test_kill_switch.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from meshkit import write_mesh

from agentmesh.a2a.skills import SEND_METHODS
from agentmesh.configfile import load_config
from agentmesh.context import CallContext
from agentmesh.errors import MeshError
from agentmesh.interceptors.auth import AdmissionStage
from agentmesh.metadata import AUTHORIZATION, TXN_LINKS, TXN_TOKEN
from agentmesh.pki import CertificateAuthority
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.publisher import TrustPublisher
from agentmesh.tokens import TokenAuthority
from agentmesh.trust import TrustSnapshot

METHOD = "/agentmesh.v1.Agent/Invoke"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Peer:
    """A verified mTLS peer as grpc.aio's servicer context shows it (``auth_context``)."""

    def __init__(self, pem: bytes) -> None:
        self.pem = pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"ssl"], "x509_pem_cert": [self.pem]}


@dataclasses.dataclass
class World:
    root: Path
    ca: CertificateAuthority
    authority: TokenAuthority
    publisher: TrustPublisher
    server: MeshNode  # the member serving the calls ("validator")
    members: dict[str, MeshNode]
    clock: Clock
    cached: AdmissionStage  # the stage under test
    fresh: Callable[[], AdmissionStage]  # a stage that has decided nothing yet

    def snapshot(self, **changes: Any) -> TrustSnapshot:
        """The trust data as the control plane would stream it now, with ``changes``."""
        self.publisher.refresh()
        return dataclasses.replace(self.publisher.snapshot, received_at=self.clock.now, **changes)

    def token(self, name: str, ttl: float = 300, authority: TokenAuthority | None = None) -> str:
        node = self.members[name]
        return (authority or self.authority).issue(
            sub=str(node.spiffe_id), roles=list(self.server.config.agents[name].roles if name != "bridge" else ()),
            audience=self.server.config.tokens.audience, ttl=ttl, cnf_thumbprint=node.identity.thumbprint)

    def headers(self, name: str, token: str, txn: str | None = None, links: str | None = None) -> tuple[Any, Peer]:
        md = [(AUTHORIZATION, f"Bearer {token}")]
        if txn is not None:
            md += [(TXN_TOKEN, txn), (TXN_LINKS, links or "")]
        return tuple(md), Peer(self.members[name].identity.leaf_pem)


def served(stage: AdmissionStage) -> AdmissionStage:
    """The stage as a server that serves the Agent and A2A methods wraps it (once per method)."""
    for method in (METHOD, *SEND_METHODS):
        assert stage.applies_to(method)
    return stage


async def decide(stage: AdmissionStage, metadata: Any, peer: Peer) -> str:
    """'allow', or the refusal's error type and message."""
    call = CallContext(method=METHOD, agent="validator", metadata=metadata)
    try:
        await stage.before(call, peer)  # type: ignore[arg-type]
    except MeshError as e:
        return f"{type(e).__name__}: {e.message}"
    assert call.decision == "allow" and call.principal is not None and call.peer is not None
    return "allow"


async def both(world: World, metadata: Any, peer: Peer) -> str:
    """The cached stage's decision, which must be a fresh stage's."""
    got = await decide(world.cached, metadata, peer)
    assert got == await decide(world.fresh(), metadata, peer)
    return got


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    agents = {"validator": {"roles": ["validator"]}, "summarizer": {"roles": ["summarizer"]},
              "ingestor": {"roles": ["ingestor"]}}
    path = write_mesh(tmp_path, agents, policy=[
        {"name": "members-call-validator", "action": "allow", "to": ["validator"], "from": ["summarizer", "ingestor"]},
        {"name": "delegated", "action": "allow", "to": ["validator"], "roles": ["client"], "via": ["summarizer"]},
    ])
    config = load_config(path)
    ca = CertificateAuthority.load(config.ca_dir)
    authority = TokenAuthority.ensure(config.ca_dir, issuer=config.tokens.issuer)
    publisher = TrustPublisher(ca, jwks_json=json.dumps(authority.jwks()), issuer=authority.issuer)
    clock = Clock(publisher.snapshot.received_at)
    members = {name: MeshNode(config, name, clock=clock, renew=False) for name in (*agents, "bridge")}
    server = members["validator"]

    def stage(size: int = 1024) -> AdmissionStage:
        return served(AdmissionStage(server.identities, server.checks, server.policy, me=str(server.spiffe_id),
                                     snapshot=lambda: server.trust.snapshot, size=size))

    world = World(tmp_path, ca, authority, publisher, server, members, clock, stage(), lambda: stage(size=0))
    server.trust.update(world.snapshot())
    try:
        yield world
    finally:
        for node in members.values():
            await node.close()


async def admitted_twice(world: World, name: str = "summarizer", token: str | None = None) -> tuple[Any, Peer]:
    """A call admitted, then the same call decided from the cache."""
    metadata, peer = world.headers(name, token or world.token(name))
    assert await both(world, metadata, peer) == "allow"
    hits = world.cached.hits
    assert await both(world, metadata, peer) == "allow"
    assert world.cached.hits == hits + 1, "the second call reused the first one's decision"
    return metadata, peer


async def test_the_same_credentials_reuse_the_decision_and_others_do_not(world: World) -> None:
    await admitted_twice(world)
    hits = world.cached.hits
    metadata, peer = world.headers("ingestor", world.token("ingestor"))  # another member: decided on its own
    assert await both(world, metadata, peer) == "allow"
    assert world.cached.hits == hits


async def test_a_refusal_is_never_cached(world: World) -> None:
    metadata, peer = world.headers("bridge", world.token("bridge"))  # no rule lets the bridge call directly
    for _ in range(2):
        assert (await both(world, metadata, peer)).startswith("PermissionDenied")
    assert world.cached.hits == 0


async def test_a_stolen_token_from_another_certificate_fails_after_the_owner_was_admitted(world: World) -> None:
    token = world.token("summarizer")
    await admitted_twice(world, token=token)
    metadata, _ = world.headers("summarizer", token)
    got = await both(world, metadata, Peer(world.members["ingestor"].identity.leaf_pem))
    assert got.startswith("TokenError") and "bound" in got


async def test_a_revoked_certificate_fails_at_once(world: World) -> None:
    metadata, peer = await admitted_twice(world)
    world.ca.revoke("summarizer")
    world.server.trust.update(world.snapshot())
    assert (await both(world, metadata, peer)).startswith("PeerIdentityError")
    other, other_peer = world.headers("ingestor", world.token("ingestor"))
    assert await both(world, other, other_peer) == "allow"


async def test_the_kill_switch_fails_at_once(world: World) -> None:
    metadata, peer = await admitted_twice(world)
    world.server.trust.update(world.snapshot(revoked_members=frozenset({"summarizer"})))
    assert (await both(world, metadata, peer)).startswith("PeerIdentityError")


async def test_a_revoked_token_fails_at_once(world: World) -> None:
    token = world.token("summarizer")
    metadata, peer = await admitted_twice(world, token=token)
    jti = world.server.verifier.inspect(token).jti
    world.server.trust.update(world.snapshot(revoked_jtis=frozenset({jti})))
    assert "revoked" in await both(world, metadata, peer)
    fresh, peer = world.headers("summarizer", world.token("summarizer"))  # its next token works
    assert await both(world, fresh, peer) == "allow"


async def test_a_token_signed_by_a_key_the_control_plane_dropped_fails(world: World) -> None:
    metadata, peer = await admitted_twice(world)
    (world.root / "rotated").mkdir()
    TokenAuthority.init(world.root / "rotated")
    rotated = TokenAuthority.load(world.root / "rotated", issuer=world.authority.issuer)
    world.server.trust.update(world.snapshot(jwks_json=json.dumps(rotated.jwks())))
    assert (await both(world, metadata, peer)).startswith("TokenError")
    fresh, peer = world.headers("summarizer", world.token("summarizer", authority=rotated))
    assert await both(world, fresh, peer) == "allow"


async def test_an_expired_token_fails(world: World) -> None:
    metadata, peer = await admitted_twice(world, token=world.token("summarizer", ttl=60))
    leeway = world.server.verifier.leeway
    world.clock.now += 60 + leeway + 1
    world.server.trust.update(world.snapshot())  # the trust data stays fresh: only the token is old
    assert "expired" in await both(world, metadata, peer)


async def test_an_expired_peer_certificate_fails(world: World) -> None:
    metadata, peer = await admitted_twice(world, token=world.token("summarizer", ttl=10 * 86400))
    world.clock.now = world.members["summarizer"].identity.files.leaf.not_valid_after_utc.timestamp() + 1
    world.server.trust.update(world.snapshot())
    assert (await both(world, metadata, peer)).startswith("PeerIdentityError")


@pytest.mark.parametrize("failure_mode", ["closed", "strict"])
async def test_stale_trust_data_is_decided_as_without_a_cache(world: World, failure_mode: str) -> None:
    """Past ``revocation.max_staleness`` the cache is not used: what the failure mode says is the answer."""
    world.server.trust.policy = dataclasses.replace(world.server.trust.policy, failure_mode=failure_mode)
    metadata, peer = await admitted_twice(world)
    hits = world.cached.hits
    world.clock.now += world.server.checks.policy.max_staleness + 1
    got = await both(world, metadata, peer)
    assert world.cached.hits == hits
    assert (got == "allow") == (failure_mode == "closed"), got  # closed keeps known peers; strict refuses


async def test_a_heartbeat_keeps_the_decision_and_a_new_issuer_drops_it(world: World) -> None:
    metadata, peer = await admitted_twice(world)
    hits = world.cached.hits
    world.server.trust.update(world.server.trust.snapshot.confirmed(world.clock.now))  # a heartbeat
    assert await both(world, metadata, peer) == "allow"
    assert world.cached.hits == hits + 1
    world.server.trust.update(world.snapshot(issuers=()))  # the issuing CAs changed: decided again
    await both(world, metadata, peer)
    assert world.cached.hits == hits + 1
