"""The second review of the admission cache (commit 0427315): each test states the behaviour the chain
had before the cache (or that a stage caching nothing has); each failed against that commit and passes
since its findings were fixed (the skill read only once the caller is known; bounded keys, nothing kept
for unregistered methods or very long skills, the cache emptied when the trust data changes and kept when
a heartbeat re-confirms it; a hit keeps its peer known; a clock gone back decides in full).

Reuses the real world of tests/runtime/test_admission_cache.py: mesh CA certificates, control-plane
tokens, trust data as the control plane streams it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_admission_cache as base
from meshkit import running_mesh

from agentmesh.context import CallContext
from agentmesh.errors import MeshError
from agentmesh.interceptors import chain as chain_module
from agentmesh.interceptors.auth import AdmissionStage
from agentmesh.interceptors.identity import PeerIdentityCache
from agentmesh.metadata import AUTHORIZATION
from agentmesh.trust import TrustSnapshot
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

pb = pytest.importorskip("a2a.types.a2a_pb2", reason="the a2a-sdk (agentmesh[a2a]) is not installed")

world = base.world  # the fixture
World, Peer, decide = base.World, base.Peer, base.decide
SEND = "/lf.a2a.v1.A2AService/SendMessage"


def two_skills() -> Any:
    request = pb.SendMessageRequest(message=pb.Message(message_id="m", role=pb.ROLE_USER, parts=[pb.Part(text="x")]))
    request.metadata.update({"skill": "a"})
    request.message.metadata.update({"skill": "b"})
    return request


def one_skill(skill: str) -> Any:
    request = pb.SendMessageRequest(message=pb.Message(message_id="m", role=pb.ROLE_USER, parts=[pb.Part(text="x")]))
    request.metadata.update({"skill": skill})
    return request


async def decide_call(stage: AdmissionStage, call: CallContext, peer: Peer) -> str:
    try:
        await stage.before(call, peer)  # type: ignore[arg-type]
    except MeshError as e:
        return f"{type(e).__name__}: {e.message}"
    return "allow"


# --------------------------------------------------------------------- 1. the skill is read before who is calling
async def test_a_revoked_certificate_is_refused_as_revoked_whatever_its_request_says(world: World) -> None:
    """Before 0427315 identity and token ran first: a revoked peer got UNAUTHENTICATED (PeerIdentityError,
    denial stage "identity"). Now the request body is parsed first: a revoked peer gets INVALID_ARGUMENT
    (SkillError, audited as denial stage "policy")."""
    world.ca.revoke("summarizer")
    world.server.trust.update(world.snapshot())
    metadata, peer = world.headers("summarizer", world.token("summarizer"))
    call = CallContext(method=SEND, agent="validator", metadata=metadata, request=two_skills())
    got = await decide_call(world.fresh(), call, peer)
    assert got.startswith("PeerIdentityError"), got


async def test_a_refused_skill_is_audited_with_who_asked(world: World) -> None:
    """Before 0427315 a verified caller naming two skills was refused (INVALID_ARGUMENT) after identity and
    token: its span carried peer.spiffe_id, enduser.id and roles. Now the span names nobody."""
    metadata, peer = world.headers("summarizer", world.token("summarizer"))
    call = CallContext(method=SEND, agent="validator", metadata=metadata, request=two_skills())
    assert (await decide_call(world.fresh(), call, peer)).startswith("SkillError")
    assert call.peer is not None and call.principal is not None


async def test_a_caller_without_a_token_learns_nothing_about_served_methods(world: World) -> None:
    """Documented: "a caller without a valid token learns nothing about which methods exist". A served
    SendMessage (request read) answers INVALID_ARGUMENT, one the server does not serve (no request read)
    UNAUTHENTICATED: an oracle for whether a member serves A2A, without a token."""
    peer = Peer(world.members["summarizer"].identity.leaf_pem)
    served = CallContext(method=SEND, agent="validator", metadata=(), request=two_skills())
    unserved = CallContext(method=SEND, agent="validator", metadata=(), request=None)  # the unregistered path
    a, b = await decide_call(world.fresh(), served, peer), await decide_call(world.fresh(), unserved, peer)
    assert a.split(":")[0] == b.split(":")[0], (a, b)


# --------------------------------------------------------------------- 2. memory and the LRU
async def test_an_admitted_caller_cannot_evict_the_decisions_of_others(world: World) -> None:
    """One valid token spelt 1024 ways (the scheme is case-insensitive, blanks are stripped) or 1024 invented
    method names (the unregistered path, whose names "nothing may be kept per") flush every other member's
    entry: the cache is per member, the LRU shared by all peers."""
    victim, victim_peer = await base.admitted_twice(world, "ingestor")
    token = world.token("summarizer")
    peer = Peer(world.members["summarizer"].identity.leaf_pem)
    for i in range(world.cached.size):
        md = ((AUTHORIZATION, "Bearer " + " " * i + token),)
        assert await decide(world.cached, md, peer) == "allow"
    hits = world.cached.hits
    assert await decide(world.cached, victim, victim_peer) == "allow"
    assert world.cached.hits == hits + 1, "the victim's decision was evicted by another caller"


async def test_unregistered_method_names_are_not_kept(world: World) -> None:
    metadata, peer = world.headers("summarizer", world.token("summarizer"))
    for i in range(10):
        call = CallContext(method=f"/invented.Service/M{i}", agent="validator", metadata=metadata)
        assert await decide_call(world.cached, call, peer) == "allow"
    kept = [k for k in world.cached._admitted if str(k[4]).startswith("/invented.")]
    assert not kept, f"{len(kept)} decisions kept per caller-chosen (unregistered) method name"


async def test_a_key_is_bounded_in_size(world: World) -> None:
    """The skill (from the request body, up to gRPC's 4 MiB message; the payload guard runs after this
    stage) is part of the key: 1024 entries can hold GiBs."""
    metadata, peer = world.headers("summarizer", world.token("summarizer"))
    call = CallContext(method=SEND, agent="validator", metadata=metadata, request=one_skill("s" * 1_000_000))
    assert await decide_call(world.cached, call, peer) == "allow"
    assert not world.cached._admitted, "a decision about a 1 MB skill name is not kept"
    call = CallContext(method=SEND, agent="validator", metadata=metadata, request=one_skill("search"))
    assert await decide_call(world.cached, call, peer) == "allow"
    size = max(sum(sys.getsizeof(part) for part in key) for key in world.cached._admitted)
    assert size < 64 * 1024, f"one cache key holds {size} bytes"


async def test_dead_entries_do_not_pin_old_trust_data(world: World) -> None:
    """Entries refused by still_admitted stay until looked up again or evicted, each holding the whole
    TrustSnapshot it was decided under (CRL serials, revoked jtis, bundle, JWKS). With a new snapshot
    every heartbeat, abandoned keys (renewed tokens, one caller varying its header) pin one snapshot each."""
    token = world.token("summarizer")
    peer = Peer(world.members["summarizer"].identity.leaf_pem)
    big = frozenset(f"jti-{i:06d}" for i in range(20_000))  # a large revocation list
    for i in range(20):
        world.server.trust.update(world.snapshot(revoked_jtis=frozenset(big | {f"x{i}"})))
        md = ((AUTHORIZATION, "Bearer " + " " * i + token),)
        assert await decide(world.cached, md, peer) == "allow"
    assert len(world.cached._admitted) <= 1, "entries decided under earlier trust data are dropped at once"
    assert not any(isinstance(v, TrustSnapshot) for e in world.cached._admitted.values() for v in vars_of(e))


def vars_of(entry: object) -> list[object]:
    return [getattr(entry, name) for name in entry.__slots__]  # type: ignore[attr-defined]


# --------------------------------------------------------------------- 3. "known" peers under failure_mode closed
async def test_a_peer_served_from_the_cache_stays_known(world: World) -> None:
    """With failure_mode closed, stale data keeps serving peers the identity cache knows. A decision
    reused from the admission cache does not touch the identity LRU, so an active peer ages out of it and
    is refused (UNAVAILABLE) when the data goes stale, where a stage caching nothing keeps it."""
    server = world.server

    def stage(size: int) -> AdmissionStage:
        identities = PeerIdentityCache(server.config.trust_domain, trust=server.trust, size=2, clock=world.clock)
        return base.served(AdmissionStage(identities, server.checks, server.policy, me=str(server.spiffe_id),
                                          snapshot=lambda: server.trust.snapshot, size=size))

    cached, fresh = stage(1024), stage(0)
    a = world.headers("summarizer", world.token("summarizer"))
    b = world.headers("ingestor", world.token("ingestor"))
    c = world.headers("bridge", world.token("bridge"))  # refused by the policy, but its certificate is now known
    for md, peer in (a, b, a, c):
        for s in (cached, fresh):
            await decide(s, md, peer)
    world.clock.now += server.checks.policy.max_staleness + 1  # no heartbeat: the data goes stale
    assert await decide(fresh, *a) == "allow"
    assert await decide(cached, *a) == "allow"


# --------------------------------------------------------------------- 4. live: a heartbeat over the wire
async def test_a_streamed_heartbeat_keeps_the_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """admission.py: "a heartbeat that only re-confirms the data keeps them". A member receives every
    heartbeat as a newly verified snapshot (new frozensets, bytes, issuers tuple), so every entry is
    refused after each heartbeat (revocation_refresh, 5 s by default): the table test only holds for
    TrustSnapshot.confirmed(), which never crosses the wire."""
    stages: list[AdmissionStage] = []

    class Recorded(AdmissionStage):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            stages.append(self)

    monkeypatch.setattr(chain_module, "AdmissionStage", Recorded)
    agents = {"validator": {"roles": ["validator"]}, "summarizer": {"roles": ["summarizer"]}}
    policy = [{"name": "s-v", "action": "allow", "to": ["validator"], "from": ["summarizer"]}]
    async with running_mesh(tmp_path, agents, policy=policy, tokens={"revocation_refresh": 0.5}) as mesh:
        stub = mesh.nodes["summarizer"].stub("validator", agent_pb2_grpc.AgentStub)
        (stage,) = [s for s in stages if s.me.endswith("/validator")]
        for _ in range(3):
            await stub.Invoke(agent_pb2.Task(id="t"), timeout=10)
        assert stage.hits == 2
        node = mesh.nodes["validator"]
        before = node.trust.snapshot
        await node.wait_for_trust(lambda s: s is not before, timeout=10)  # one heartbeat, nothing changed
        assert node.trust.snapshot.revoked_serials == before.revoked_serials
        await stub.Invoke(agent_pb2.Task(id="t"), timeout=10)
        assert stage.hits == 3, "a heartbeat that changed nothing dropped the decision"



async def test_live_a_caller_without_a_token_cannot_tell_a2a_is_served(tmp_path: Path) -> None:
    """Over real sockets, a stock a2a-sdk server behind node.server(): a mesh member's certificate and no
    token. SendMessage naming two skills answers INVALID_ARGUMENT (the method is served, its body was
    read before anyone was authenticated); a method the server does not serve answers UNAUTHENTICATED.
    Before 0427315 both were UNAUTHENTICATED."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("a2a_conftest", Path(__file__).parents[1] / "a2a" / "conftest.py")
    assert spec is not None and spec.loader is not None
    kit = importlib.util.module_from_spec(spec)
    sys.modules["a2a_conftest"] = kit  # its dataclasses look their module up
    spec.loader.exec_module(kit)
    from a2a.types import a2a_pb2_grpc

    from agentmesh.runtime.channel import secure_channel

    async with kit.a2a_mesh(tmp_path) as mesh:
        alpha = mesh.clients[0]["alpha"]
        channel = secure_channel(alpha.identity, f"127.0.0.1:{mesh.servers[0].port}", "travel")
        try:
            codes = []
            for call in (a2a_pb2_grpc.A2AServiceStub(channel).SendMessage(two_skills(), timeout=10),
                         agent_pb2_grpc.AgentStub(channel).Invoke(agent_pb2.Task(id="t"), timeout=10)):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                codes.append(e.value.code())
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 2, codes
        finally:
            await channel.close()


# --------------------------------------------------------------------- 5. delegated calls
def delegated(world: World) -> tuple[Any, Peer]:
    """bridge (for alice, a client) -> summarizer -> validator: real transaction token and hop links."""
    from agentmesh.tokens.delegation import principal_of
    from agentmesh.tokens.txn import grant, sign_txn_token

    a, server = world.authority, world.server
    client = a.issue(sub="alice", roles=["client"], audience=server.config.tokens.audience, ttl=600)
    subject = server.verifier.verify_unbound(client)
    bridge, summarizer = world.members["bridge"], world.members["summarizer"]
    g = grant(subject, principal_of(subject, a.issuer), requester=str(bridge.spiffe_id),
              trust_domain=server.config.trust_domain, scope="", route="test", rctx={}, now=world.clock.now, ttl=300)
    txn = sign_txn_token(a.key, a.algorithm, a.kid, a.issuer, g.claims, iat=world.clock.now, exp=g.expires_at)
    first = bridge.delegation.hop_signer(bridge.identity.files).link(txn, [], str(summarizer.spiffe_id))
    last = summarizer.delegation.hop_signer(summarizer.identity.files).link(txn, [first], str(server.spiffe_id))
    return world.headers("summarizer", world.token("summarizer"), txn, f"{first},{last}")


async def test_sound_a_revoked_earlier_hop_fails_at_once(world: World) -> None:
    metadata, peer = delegated(world)
    assert await base.both(world, metadata, peer) == "allow"
    assert await base.both(world, metadata, peer) == "allow"
    assert world.cached.hits == 1
    world.server.trust.update(world.snapshot(revoked_members=frozenset({"bridge"})))
    assert (await base.both(world, metadata, peer)).startswith("DelegationError")


async def test_sound_a_revoked_hop_certificate_fails_at_once(world: World) -> None:
    metadata, peer = delegated(world)
    assert await base.both(world, metadata, peer) == "allow"
    world.ca.revoke("bridge")
    world.server.trust.update(world.snapshot())
    assert (await base.both(world, metadata, peer)).startswith("DelegationError")


async def test_a_clock_stepped_back_is_decided_as_without_a_cache(world: World) -> None:
    """Info: after the wall clock steps back by more than tokens.leeway (an NTP correction), a stage caching
    nothing refuses the delegated call (its newest hop link is "not yet valid"); the cached decision admits
    it (valid_until only bounds the future)."""
    metadata, peer = delegated(world)
    assert await base.both(world, metadata, peer) == "allow"
    world.clock.now -= world.server.checks.leeway + 5
    got_fresh = await decide(world.fresh(), metadata, peer)
    got_cached = await decide(world.cached, metadata, peer)
    assert got_fresh == got_cached, (got_fresh, got_cached)
