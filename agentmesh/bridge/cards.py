"""A2A discovery at the bridge: agent cards signed by the control plane, and the key set that verifies them.

::

    GET /v1/agents/{agent}/.well-known/agent-card.json   the card of an A2A agent (agents.<name>.a2a)
    GET /.well-known/agent-card.json                     the card of the only A2A agent, when there is one
    GET /.well-known/jwks.json                           the mesh token key set (the signatures' ``jku``)

All three are public (discovery comes before authentication); an extended card is never served here.
The cards are the control plane's (``TokenService.SignAgentCard`` over the bridge node's mTLS channel):
it builds them from its own config (:func:`agentmesh.a2a.cards.mesh_card`) and signs them with the mesh
token key. :class:`SignedCards` keeps each one until its signing key leaves the mesh JWKS (a key
rotation) or ``max_age`` passes; a card the control plane cannot sign now is a 503. The JWKS is the
one the bridge node follows in the control plane's signed trust snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.a2a.cards import CARD_PATH, JWKS_PATH, a2a_agents, agent_url, public_url
from agentmesh.bridge.errors import HttpError
from agentmesh.clock import Clock
from agentmesh.config import MeshConfig
from agentmesh.errors import MeshError, Unavailable
from agentmesh.runtime.delegation import rpc_error
from agentmesh.runtime.node import MeshNode
from agentmesh.v1 import control_pb2, control_pb2_grpc

__all__ = ["CACHE_CONTROL", "Signed", "SignedCards", "card_routes", "jwks_kids"]

log = logging.getLogger("agentmesh.bridge")

#: what clients may keep: a minute, so a rotated key's cards are gone from caches soon after it
CACHE_CONTROL = "public, max-age=60"
_NO_STORE = {"Cache-Control": "no-store"}
_RETRY_AFTER = "5"


@dataclass(frozen=True, slots=True)
class Signed:
    """A signed card as the control plane answered it: its JSON and the key id of its signature."""

    body: bytes
    kid: str


@dataclass(frozen=True, slots=True)
class _Held:
    signed: Signed
    at: float


class SignedCards:
    """Signed cards by agent: fetched once, kept while their key is in the mesh JWKS (``kids``) and younger
    than ``max_age`` seconds; one fetch per agent at a time."""

    def __init__(self, fetch: Callable[[str], Awaitable[Signed]], kids: Callable[[], frozenset[str]], *,
                 max_age: float = 300.0, clock: Clock = time.monotonic) -> None:
        self._fetch = fetch
        self._kids = kids
        self.max_age = max_age
        self.clock = clock
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _current(self, agent: str) -> Signed | None:
        held = self._held.get(agent)
        if held is None or self.clock() - held.at >= self.max_age or held.signed.kid not in self._kids():
            return None
        return held.signed

    async def get(self, agent: str) -> Signed:
        """The card of ``agent``; raises what ``fetch`` raises when it has to fetch and cannot."""
        signed = self._current(agent)
        if signed is not None:
            return signed
        async with self._locks.setdefault(agent, asyncio.Lock()):
            signed = self._current(agent)  # fetched while this request waited
            if signed is None:
                signed = await self._fetch(agent)
                self._held[agent] = _Held(signed, self.clock())
            return signed

    def clear(self) -> None:
        self._held.clear()


def jwks_kids(jwks_json: str) -> frozenset[str]:
    """The key ids of a JWKS document (none for anything unreadable)."""
    try:
        keys = json.loads(jwks_json).get("keys", [])
        return frozenset(k["kid"] for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str))
    except (ValueError, AttributeError, TypeError):
        return frozenset()


def card_routes(config: MeshConfig, node: Callable[[], MeshNode], *, max_age: float = 300.0,
                timeout: float = 5.0, clock: Clock = time.monotonic) -> list[Route]:
    """The discovery routes (put them before the ``/v1/agents`` mount). ``node`` gives the bridge's running
    MeshNode (or raises an :class:`HttpError` while there is none). A ConfigError now when an A2A agent's
    card could state no URL (``bridge.public_url`` needed)."""
    agents = a2a_agents(config)
    if agents:
        public_url(config.bridge)
    card_urls = [agent_url(config, name) + CARD_PATH for name in agents]
    parsed: dict[str, frozenset[str]] = {}

    def jwks_json() -> str:
        snapshot = node().trust.snapshot
        if snapshot is None or not snapshot.jwks_json:
            raise HttpError(grpc.StatusCode.UNAVAILABLE, "no key set from the control plane yet",
                            headers={"Retry-After": _RETRY_AFTER, **_NO_STORE})
        return snapshot.jwks_json

    def kids() -> frozenset[str]:
        try:
            text = jwks_json()
        except HttpError:
            return frozenset()
        if text not in parsed:
            parsed.clear()
            parsed[text] = jwks_kids(text)
        return parsed[text]

    async def fetch(agent: str) -> Signed:
        stub = control_pb2_grpc.TokenServiceStub(node().delegation.control())
        try:
            res = await stub.SignAgentCard(control_pb2.AgentCardRequest(agent=agent), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e, f"the agent card of {agent}") from None
        return Signed(res.card_json.encode(), res.kid)

    cards = SignedCards(fetch, kids, max_age=max_age, clock=clock)

    async def serve(agent: str) -> Response:
        try:
            signed = await cards.get(agent)
        except MeshError as e:
            log.warning("bridge: %s", e.message)
            what = "is unreachable" if isinstance(e, Unavailable) else "refused to sign it"
            raise HttpError(grpc.StatusCode.UNAVAILABLE, f"the agent card of {agent} is unavailable: the control "
                            f"plane {what}", headers={"Retry-After": _RETRY_AFTER, **_NO_STORE}) from None
        return Response(signed.body, media_type="application/json", headers={"Cache-Control": CACHE_CONTROL})

    async def agent_card(request: Request) -> Response:
        agent = request.path_params["agent"]
        try:
            if agent not in agents:
                raise HttpError.not_found(f"no A2A agent named {agent!r} in this mesh")
            return await serve(agent)
        except HttpError as e:
            return e.response(_NO_STORE)

    async def root_card(request: Request) -> Response:
        try:
            if len(agents) != 1:
                raise HttpError.not_found(
                    f"this bridge serves several A2A agents; their cards: {', '.join(card_urls)}" if agents
                    else "no A2A agent in this mesh")
            return await serve(agents[0])
        except HttpError as e:
            return e.response(_NO_STORE)

    async def jwks(request: Request) -> Response:
        try:
            text = jwks_json()
        except HttpError as e:
            return e.response(_NO_STORE)
        return Response(text.encode(), media_type="application/jwk-set+json",
                        headers={"Cache-Control": CACHE_CONTROL})

    return [
        Route(CARD_PATH, root_card, methods=["GET"]),
        Route(JWKS_PATH, jwks, methods=["GET"]),
        Route("/v1/agents/{agent}" + CARD_PATH, agent_card, methods=["GET"]),
    ]
