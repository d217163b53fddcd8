"""Who is calling: the per-call state the server chain fills in and handlers read.

The aio servicer context refuses new attributes, so the chain keeps its findings in a contextvar;
handlers call :func:`current_call` to see the verified peer, principal, roles, and for a delegated
call the transaction (``txn``: id, scope, principal) and the verified chain of members it passed.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

import grpc

from agentmesh.errors import MeshError
from agentmesh.identity import PeerIdentity

__all__ = ["CallContext", "current_call", "maybe_current_call"]


@dataclass(slots=True)
class CallContext:
    """Filled stage by stage by the server chain; read-only for handlers."""

    method: str
    agent: str  # the agent serving the call
    metadata: Any = field(default=(), repr=False)  # invocation metadata as received
    request: Any = field(default=None, repr=False)  # the request message, when it is one (not a stream)
    request_checked: bool = False  # the payload guard checked ``request`` before the handler (in a thread)
    peer: PeerIdentity | None = None  # from the verified client certificate, never from metadata
    principal: str | None = None  # effective subject (the original caller when delegated)
    roles: tuple[str, ...] = ()
    chain: tuple[str, ...] = ()  # verified delegation chain (SPIFFE IDs), oldest first, immediate peer last
    txn: Any = None  # the verified transaction token (agentmesh.tokens.txn.TxnToken) of a delegated call
    peer_token: Any = None  # the peer's own verified token (its jti is re-checked while the call runs)
    txn_token: str | None = field(default=None, repr=False)  # forwarded unchanged when delegating onward
    links: tuple[str, ...] = field(default=(), repr=False)  # the hop links received, extended onward
    hops: tuple[Any, ...] = field(default=(), repr=False)  # the verified links (tokens.links.Link), re-checked
    rule: str | None = None
    decision: str | None = None
    ratelimit_remaining: int | None = None
    span: Any = field(default=None, repr=False)  # the server span of this call
    deadline: float | None = None  # time.monotonic() by which the call must end
    status: grpc.StatusCode | None = None  # the status the chain ended the call with, if it did
    ended_by: MeshError | None = None  # set when a revocation ends the call while it runs

    def metadata_value(self, key: str) -> str | None:
        """The first value of an invocation metadata key (keys are lowercase in gRPC)."""
        for k, v in self.metadata or ():
            if k == key:
                return v if isinstance(v, str) else None
        return None

    @property
    def peer_spiffe_id(self) -> str | None:
        return self.peer.uri if self.peer else None

    @property
    def scope(self) -> tuple[str, ...]:
        """The transaction's scope (delegated calls); () for a member acting for itself."""
        return self.txn.scope if self.txn is not None else ()

    @property
    def txn_id(self) -> str | None:
        """The transaction id: the same on every hop of one external request."""
        return self.txn.txn if self.txn is not None else None


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("agentmesh_call", default=None)


def maybe_current_call() -> CallContext | None:
    return _current.get()


def current_call() -> CallContext:
    """The verified caller of the call being served; outside a mesh call it is a programming error."""
    call = _current.get()
    if call is None:
        raise RuntimeError("current_call() is only available inside a call served by a mesh server")
    return call


def _set(call: CallContext | None) -> contextvars.Token[CallContext | None]:
    return _current.set(call)
