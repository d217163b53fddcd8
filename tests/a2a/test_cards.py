"""Agent cards: what the mesh states (agentmesh.a2a.cards, table tests), signed by the control plane for
the bridge only, served at the bridge's well-known URLs to the stock a2a-sdk resolver, and verified with
the stock a2a-sdk verifier against the key set the bridge publishes; a tampered card fails."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from a2a.client.card_resolver import A2ACardResolver
from a2a.client.errors import AgentCardResolutionError
from a2a.types import a2a_pb2
from a2a.utils.signing import InvalidSignaturesError, create_signature_verifier
from google.protobuf import json_format
from jwt import PyJWK
from jwt.utils import base64url_decode
from meshkit import running_mesh
from starlette.applications import Starlette

from agentmesh.a2a.cards import (
    BEARER_SCHEME,
    MTLS_SCHEME,
    jwks_url,
    mesh_card,
    public_url,
    sign_card,
)
from agentmesh.bridge.cards import CACHE_CONTROL, Signed, SignedCards, card_routes
from agentmesh.config import A2AConfig, AgentConfig, BridgeConfig, MeshConfig, TokensConfig
from agentmesh.errors import ConfigError, Unavailable
from agentmesh.runtime.control import start_control
from agentmesh.tokens import TokenAuthority, crypto
from agentmesh.v1 import control_pb2, control_pb2_grpc

sys.path.insert(0, str(Path(__file__).parents[1] / "bridge"))  # bridgekit

from bridgekit import AGENT_MODULE, BridgeMesh, generate_probe, running_bridge

CARD = Path(__file__).parents[2] / "examples" / "a2a" / "card.json"
ALGORITHMS = ["ES256", "EdDSA"]


# ---------------------------------------------------------------------------- what the mesh states (pure)
def config_of(agents: dict[str, A2AConfig | None], **bridge: Any) -> MeshConfig:
    return MeshConfig(
        trust_domain="example.org", ca_dir=Path("/nonexistent/ca"), identities_dir=Path("/nonexistent/ids"),
        agents={name: AgentConfig(name, f"127.0.0.1:{7100 + i}", Path("/nonexistent") / name, a2a=a2a)
                for i, (name, a2a) in enumerate(agents.items(), start=1)},
        tokens=TokensConfig(issuer="spiffe://example.org"), bridge=BridgeConfig(**bridge))


def travel(**more: Any) -> dict[str, A2AConfig | None]:
    return {"travel": A2AConfig(card=CARD.read_text(), **more), "plain": None}


@pytest.mark.parametrize(("listen", "tls", "configured", "expected"), [
    ("127.0.0.1:8443", True, None, "https://localhost:8443"),
    ("127.0.0.2:8443", True, None, "https://localhost:8443"),
    ("[::1]:9000", True, None, "https://localhost:9000"),
    ("localhost:8080", False, None, "http://localhost:8080"),
    ("10.0.0.5:443", True, None, "https://10.0.0.5:443"),
    ("[2001:db8::1]:443", True, None, "https://[2001:db8::1]:443"),
    ("bridge.example.org:8443", True, None, "https://bridge.example.org:8443"),
    ("0.0.0.0:8443", True, "https://mesh.example.com/", "https://mesh.example.com"),
    ("127.0.0.1:8443", True, "https://mesh.example.com/api", "https://mesh.example.com/api"),
])
def test_public_url(listen: str, tls: bool, configured: str | None, expected: str) -> None:
    assert public_url(BridgeConfig(listen=listen, tls=tls, public_url=configured)) == expected


@pytest.mark.parametrize("listen", ["0.0.0.0:8443", "[::]:8443"])
def test_a_wildcard_listen_address_needs_public_url(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"bridge\.public_url: required"):
        public_url(BridgeConfig(listen=listen))


def interfaces(card: Any) -> list[tuple[str, str, str]]:
    return [(i.protocol_binding, i.url, i.protocol_version) for i in card.supported_interfaces]


def requirements(card: Any) -> list[set[str]]:
    return [set(r.schemes) for r in card.security_requirements]


@pytest.mark.parametrize(("bridge", "agent_url"), [
    ({}, "https://localhost:8443/v1/agents/travel"),
    ({"tls": False, "listen": "127.0.0.1:8080"}, "http://localhost:8080/v1/agents/travel"),
    ({"public_url": "https://mesh.example.com"}, "https://mesh.example.com/v1/agents/travel"),
])
def test_mesh_card_states_the_interfaces_and_what_the_mesh_enforces(bridge: dict[str, Any], agent_url: str) -> None:
    config = config_of(travel(), **bridge)
    card = mesh_card(config, "travel")
    assert interfaces(card) == [("JSONRPC", agent_url, "1.0"), ("HTTP+JSON", agent_url, "1.0"),
                                ("GRPC", f"https://{config.agents['travel'].address}", "1.0")]
    assert set(card.security_schemes) == {BEARER_SCHEME, MTLS_SCHEME}
    bearer = card.security_schemes[BEARER_SCHEME]
    assert bearer.WhichOneof("scheme") == "http_auth_security_scheme"
    assert (bearer.http_auth_security_scheme.scheme, bearer.http_auth_security_scheme.bearer_format) == \
        ("bearer", "JWT")
    assert card.security_schemes[MTLS_SCHEME].WhichOneof("scheme") == "mtls_security_scheme"
    assert requirements(card) == [{BEARER_SCHEME}, {MTLS_SCHEME, BEARER_SCHEME}]
    assert not card.signatures
    assert card.capabilities.extended_agent_card is False
    # what the agent says of itself is kept
    configured = json.loads(CARD.read_text())
    assert card.name == configured["name"] and card.description == configured["description"]
    assert [s.id for s in card.skills] == [s["id"] for s in configured["skills"]]
    assert card.capabilities.streaming is True


def test_what_a_card_declares_of_interfaces_security_and_signatures_is_overridden() -> None:
    doc = json.loads(CARD.read_text())
    doc["supportedInterfaces"] = [{"url": "https://evil.example/a2a", "protocolBinding": "JSONRPC",
                                   "protocolVersion": "1.0"}]
    doc["securitySchemes"] = {"none": {"apiKeySecurityScheme": {"location": "query", "name": "k"}},
                              "bearer": {"httpAuthSecurityScheme": {"scheme": "basic"}}}
    doc["securityRequirements"] = [{"schemes": {"none": {}}}]
    doc["skills"][0]["securityRequirements"] = [{"schemes": {"none": {}}}]
    doc["signatures"] = [{"protected": "e30", "signature": "AAAA"}]
    config = config_of({"travel": A2AConfig(card=json.dumps(doc))})
    card = mesh_card(config, "travel")
    assert all("evil" not in url for _, url, _ in interfaces(card))
    assert set(card.security_schemes) == {BEARER_SCHEME, MTLS_SCHEME}
    assert card.security_schemes[BEARER_SCHEME].http_auth_security_scheme.scheme == "bearer"
    assert requirements(card) == [{BEARER_SCHEME}, {MTLS_SCHEME, BEARER_SCHEME}]
    assert all(not s.security_requirements for s in card.skills)
    assert not card.signatures


def test_the_extended_card() -> None:
    extended = json.loads(CARD.read_text())
    extended["skills"].append({"id": "expense", "name": "Expense a trip", "description": "Files expenses",
                               "tags": ["internal"]})
    config = config_of(travel(extended_card=json.dumps(extended)))
    public, full = mesh_card(config, "travel"), mesh_card(config, "travel", extended=True)
    assert public.capabilities.extended_agent_card is True and full.capabilities.extended_agent_card is True
    assert "expense" in [s.id for s in full.skills] and "expense" not in [s.id for s in public.skills]
    assert interfaces(full) == interfaces(public) and requirements(full) == requirements(public)


@pytest.mark.parametrize(("agent", "extended", "message"), [
    ("plain", False, "'plain' is not an A2A agent"),
    ("nobody", False, "unknown agent 'nobody'"),
    ("travel", True, "'travel' has no extended card"),
])
def test_mesh_card_refuses(agent: str, extended: bool, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mesh_card(config_of(travel()), agent, extended=extended)


def key_provider(jwks: dict[str, Any]) -> Any:
    def provide(kid: str | None, jku: str | None) -> PyJWK:
        return PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
    return provide


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sign_card_verifies_and_a_changed_field_does_not(algorithm: str) -> None:
    key = crypto.generate_key(algorithm)
    kid = "k1"
    jwks = {"keys": [{**crypto.public_jwk(key), "kid": kid, "alg": algorithm}]}
    config = config_of(travel())
    card = sign_card(mesh_card(config, "travel"), key, algorithm=algorithm, kid=kid, jku=jwks_url(config))
    header = json.loads(base64url_decode(card.signatures[0].protected.encode()))
    assert header == {"alg": algorithm, "kid": kid, "typ": "JOSE", "jku": "https://localhost:8443/.well-known/jwks.json"}
    verify = create_signature_verifier(key_provider(jwks), ALGORITHMS)
    verify(card)
    tampered = a2a_pb2.AgentCard()
    tampered.CopyFrom(card)
    tampered.supported_interfaces[0].url = "https://evil.example/v1/agents/travel"
    with pytest.raises(InvalidSignaturesError):
        verify(tampered)


# ---------------------------------------------------------------------------- the bridge's cache (pure)
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_signed_cards_are_kept_until_their_key_leaves_the_jwks_or_they_age() -> None:
    clock, kids = FakeClock(), {"k1"}
    fetched: list[str] = []
    current = ["k1"]

    async def fetch(agent: str) -> Signed:
        fetched.append(agent)
        return Signed(f"{agent}#{len(fetched)}".encode(), current[0])

    cards = SignedCards(fetch, lambda: frozenset(kids), max_age=300, clock=clock)
    assert (await cards.get("travel")).body == b"travel#1"
    clock.now += 299
    assert (await cards.get("travel")).body == b"travel#1"  # kept
    clock.now += 1
    assert (await cards.get("travel")).body == b"travel#2"  # aged out
    kids, current[0] = {"k2"}, "k2"  # a key rotation: the card's kid is no longer in the mesh JWKS
    assert (await cards.get("travel")) == Signed(b"travel#3", "k2")
    assert (await cards.get("travel")).body == b"travel#3"
    assert fetched == ["travel"] * 3


async def test_a_card_that_cannot_be_fetched_is_not_kept() -> None:
    calls = 0

    async def fetch(agent: str) -> Signed:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Unavailable("control plane unavailable")
        return Signed(b"{}", "k1")

    cards = SignedCards(fetch, lambda: frozenset({"k1"}))
    with pytest.raises(Unavailable):
        await cards.get("travel")
    assert (await cards.get("travel")).body == b"{}"


async def test_the_root_card_with_several_or_no_a2a_agents_is_404_naming_the_cards() -> None:
    two = config_of({"travel": A2AConfig(card=CARD.read_text()), "hotel": A2AConfig(card=CARD.read_text())})

    def no_node() -> Any:
        raise AssertionError("a 404 needs no control plane")

    for config, expected in [(two, ["https://localhost:8443/v1/agents/travel/.well-known/agent-card.json",
                                    "https://localhost:8443/v1/agents/hotel/.well-known/agent-card.json"]),
                             (config_of({"plain": None}), ["no A2A agent"])]:
        app = Starlette(routes=card_routes(config, no_node))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            res = await client.get("/.well-known/agent-card.json")
            assert res.status_code == 404
            message = res.json()["message"]
            assert "\n" not in message and all(e in message for e in expected)
            res = await client.get("/v1/agents/plain/.well-known/agent-card.json")
            assert res.status_code == 404


def test_a_bridge_with_an_a2a_agent_and_a_wildcard_listen_needs_public_url() -> None:
    with pytest.raises(ConfigError, match=r"bridge\.public_url"):
        card_routes(config_of(travel(), listen="0.0.0.0:8443"), lambda: None)  # type: ignore[arg-type,return-value]
    card_routes(config_of({"plain": None}, listen="0.0.0.0:8443"), lambda: None)  # type: ignore[arg-type,return-value]


# ---------------------------------------------------------------------------- a real mesh behind a real bridge
AGENTS: dict[str, dict[str, Any]] = {
    "travel": {"a2a": {"card": str(CARD)}},  # its card is the control plane's to state: it need not run
    "alpha": {"roles": ["alpha"], "descriptors": [AGENT_MODULE]},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BridgeMesh]:
    generate_probe(tmp_path_factory.mktemp("protos"))
    async with running_bridge(tmp_path_factory.mktemp("mesh"), AGENTS, serve=["alpha"]) as m:
        yield m


async def published_jwks(mesh: BridgeMesh) -> dict[str, Any]:
    res = await mesh.client.get("/.well-known/jwks.json")
    assert res.status_code == 200 and res.headers["cache-control"] == CACHE_CONTROL
    doc: dict[str, Any] = res.json()
    assert all("d" not in k for k in doc["keys"])  # public keys only
    return doc


def unsigned(card: Any) -> Any:
    copy = a2a_pb2.AgentCard()
    copy.CopyFrom(card)
    del copy.signatures[:]
    return copy


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("base", ["/v1/agents/travel", ""])
async def test_the_stock_resolver_gets_a_card_that_verifies_with_the_published_key(mesh: BridgeMesh,
                                                                                   base: str) -> None:
    jwks = await published_jwks(mesh)
    assert jwks == mesh.authority.jwks()
    verify = create_signature_verifier(key_provider(jwks), ALGORITHMS)
    resolver = A2ACardResolver(mesh.client, mesh.url + base)
    card = await resolver.get_agent_card(signature_verifier=verify)
    assert unsigned(card) == mesh_card(mesh.config, "travel")  # as the mesh states it
    assert interfaces(card)[0] == ("JSONRPC", "https://localhost:8443/v1/agents/travel", "1.0")
    assert requirements(card) == [{BEARER_SCHEME}, {MTLS_SCHEME, BEARER_SCHEME}]
    [signature] = card.signatures
    header = json.loads(base64url_decode(signature.protected.encode()))
    assert header == {"alg": mesh.authority.algorithm, "kid": mesh.authority.kid, "typ": "JOSE",
                      "jku": jwks_url(mesh.config)}
    res = await mesh.client.get(f"{base}/.well-known/agent-card.json")
    assert res.headers["cache-control"] == CACHE_CONTROL and "authorization" not in res.request.headers


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("change", [
    lambda c: setattr(c, "description", c.description + "!"),
    lambda c: setattr(c.supported_interfaces[0], "url", "https://evil.example/v1/agents/travel"),
    lambda c: c.security_schemes["bearer"].http_auth_security_scheme.__setattr__("scheme", "basic"),
    lambda c: c.security_schemes.pop("mtls"),
    lambda c: c.skills.pop(),
])
async def test_a_tampered_card_fails_verification(mesh: BridgeMesh, change: Any) -> None:
    verify = create_signature_verifier(key_provider(await published_jwks(mesh)), ALGORITHMS)
    card = await A2ACardResolver(mesh.client, mesh.url + "/v1/agents/travel").get_agent_card()
    tampered = a2a_pb2.AgentCard()
    tampered.CopyFrom(card)
    change(tampered)
    verify(card)  # the untampered one passes
    with pytest.raises(InvalidSignaturesError):
        verify(tampered)


@pytest.mark.asyncio(loop_scope="module")
async def test_scopeless_security_requirements_are_outside_the_a2a_signature(mesh: BridgeMesh) -> None:
    """Known limit of A2A signing (a2a-sdk 1.3.0): the canonical form drops empty values, and a requirement
    naming schemes without scopes ({"bearer": []}) is all empty values; so the requirements are not signed
    (the schemes are). Nothing depends on it: the mesh enforces what it enforces whatever a card says."""
    verify = create_signature_verifier(key_provider(await published_jwks(mesh)), ALGORITHMS)
    card = await A2ACardResolver(mesh.client, mesh.url + "/v1/agents/travel").get_agent_card()
    del card.security_requirements[:]
    verify(card)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("agent", ["alpha", "nobody"])
async def test_an_agent_without_a2a_has_no_card(mesh: BridgeMesh, agent: str) -> None:
    res = await mesh.client.get(f"/v1/agents/{agent}/.well-known/agent-card.json")
    assert res.status_code == 404 and res.json()["code"] == "NOT_FOUND"
    with pytest.raises(AgentCardResolutionError):
        await A2ACardResolver(mesh.client, f"{mesh.url}/v1/agents/{agent}").get_agent_card()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("extended", [False, True])
async def test_only_the_bridge_gets_cards_signed(mesh: BridgeMesh, extended: bool) -> None:
    """The attack: another member (an agent with a valid mesh certificate) asks the control plane to sign."""
    request = control_pb2.AgentCardRequest(agent="travel", extended=extended)
    agent = control_pb2_grpc.TokenServiceStub(mesh.nodes["alpha"].delegation.control())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await agent.SignAgentCard(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only the bridge" in (refused.value.details() or "")
    if extended:
        return  # travel has no extended card: the bridge would get INVALID_ARGUMENT
    bridge = control_pb2_grpc.TokenServiceStub(mesh.nodes["bridge"].delegation.control())
    signed = await bridge.SignAgentCard(request, timeout=5)
    assert signed.kid == mesh.authority.kid
    card = json_format.Parse(signed.card_json, a2a_pb2.AgentCard())
    create_signature_verifier(key_provider(mesh.authority.jwks()), ALGORITHMS)(card)


@pytest.mark.asyncio(loop_scope="module")
async def test_the_bridge_cannot_get_a_card_for_a_non_a2a_agent_signed(mesh: BridgeMesh) -> None:
    bridge = control_pb2_grpc.TokenServiceStub(mesh.nodes["bridge"].delegation.control())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await bridge.SignAgentCard(control_pb2.AgentCardRequest(agent="alpha"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------- control plane down, key rotated
async def test_cards_follow_a_key_rotation_and_a_control_plane_that_is_down_is_a_503(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running_mesh(tmp_path, AGENTS, serve=["bridge"]) as mesh:
        node = mesh.nodes["bridge"]
        app = Starlette(routes=card_routes(mesh.config, lambda: node, max_age=300, clock=clock))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            async def card() -> httpx.Response:
                return await client.get("/v1/agents/travel/.well-known/agent-card.json")

            def kid_of(res: httpx.Response) -> str:
                protected = res.json()["signatures"][0]["protected"]
                return str(json.loads(base64url_decode(protected.encode()))["kid"])

            first = await card()
            assert first.status_code == 200 and kid_of(first) == mesh.authority.kid

            await mesh.control.stop(0)
            assert (await card()).json() == first.json()  # kept: still younger than max_age, key still valid
            clock.now += 300
            down = await card()
            assert down.status_code == 503 and down.headers["cache-control"] == "no-store"
            assert down.json()["message"] == "the agent card of travel is unavailable: the control plane is unreachable"
            assert "retry-after" in down.headers

            TokenAuthority.init(mesh.config.ca_dir, force=True)  # a new token key: the old kid leaves the JWKS
            rotated = TokenAuthority.load(mesh.config.ca_dir, issuer=mesh.config.tokens.issuer)
            mesh.control = await start_control(mesh.config)  # the same address; the fixture stops it
            await node.wait_for_trust(lambda t: rotated.kid in t.jwks_json, timeout=15)
            clock.now -= 300  # the kept card would be young again: only the rotation makes the bridge re-fetch
            res = await card()
            assert res.status_code == 200 and kid_of(res) == rotated.kid != mesh.authority.kid
            card_pb = json_format.Parse(res.text, a2a_pb2.AgentCard())
            create_signature_verifier(key_provider(rotated.jwks()), ALGORITHMS)(card_pb)
            jwks = (await client.get("/.well-known/jwks.json")).json()
            assert [k["kid"] for k in jwks["keys"]] == [rotated.kid]


def test_the_grpc_interface_is_the_agents_mesh_address() -> None:
    """mesh_card reads nothing but the config it is given (no files, no sockets)."""
    config = config_of(travel())
    moved = replace(config, agents={"travel": replace(config.agents["travel"], address="10.1.2.3:9999")})
    assert interfaces(mesh_card(moved, "travel"))[2] == ("GRPC", "https://10.1.2.3:9999", "1.0")
