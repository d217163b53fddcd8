"""An agent refusing the bridge's OWN mesh identity is the mesh's failure (503, Retry-After), never a
401 that sends a client with a good token off to re-authenticate; refusing the client's delegated
token stays a 401. The rule as a table, then against real agents behind the real bridge."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from bridgekit import BridgeMesh
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.bridge.errors import MESH_RETRY_AFTER, from_call_error, from_rpc_error, refuses_bridge_identity
from agentmesh.errors import DelegationError, MeshError, PeerIdentityError, TokenError, http_status_for
from agentmesh.interceptors.identity import PeerIdentityCache
from agentmesh.interceptors.status import status_of

U = grpc.StatusCode.UNAUTHENTICATED
M = "/bridgetest.v1.Probe/Echo"
ECHO = "/v1/agents/alpha/bridgetest.v1.Probe/Echo"
TICKS = "/v1/agents/alpha/bridgetest.v1.Probe/Ticks"

#: (what the agent's server chain raised, is it about the bridge's own identity or the delegation it built?)
TABLE: list[tuple[str, MeshError, bool]] = [
    # the bridge's own token (tokens/delegation.py, verify_caller)
    ("own token misbound", TokenError("token is bound to another certificate (caller's own token)"), True),
    ("own token expired", TokenError("token expired (caller's own token)"), True),
    ("no own token", TokenError("missing bearer token"), True),
    ("own token not from the mesh", TokenError("a caller's own token must come from the mesh issuer"), True),
    # the bridge's own certificate (interceptors/identity.py, identity.py, trust.py)
    ("no certificate", PeerIdentityError("no verified client certificate (mutual TLS is required)"), True),
    ("certificate revoked", PeerIdentityError("peer certificate of spiffe://example.org/agent/bridge is revoked"),
     True),
    ("member revoked", PeerIdentityError("mesh member bridge is revoked"), True),
    # the delegation the bridge built: its transaction token, its links
    ("links without a txn token", DelegationError("links", "hop links without a transaction token"), True),
    ("too deep", DelegationError("depth", "delegation chain longer than tokens.max_delegation_depth (4)"), True),
    ("txn token expired", DelegationError("txn-token", "transaction token: token expired"), True),
    ("its own link refused", DelegationError("last-hop", "the last hop link is not signed by this call's peer"),
     True),
    # the client's token was revoked since the exchange: the client's to fix
    ("client token revoked", DelegationError("txn-revoked", "transaction token: its subject token was revoked"),
     False),
]


def _refused(err: MeshError) -> grpc.aio.AioRpcError:
    """The status an agent's server chain answers with for ``err`` (interceptors/status.py), as the bridge sees it."""
    code, message, trailing = status_of(err)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), message)


@pytest.mark.parametrize(("err", "own"), [pytest.param(e, o, id=n) for n, e, o in TABLE])
def test_which_refusals_are_the_bridges_own(err: MeshError, own: bool) -> None:
    assert refuses_bridge_identity(_refused(err)) is own


@pytest.mark.parametrize(("code", "details"), [
    pytest.param(U, "session expired, sign in again", id="a handler's own UNAUTHENTICATED"),
    pytest.param(U, "token expired (caller's own token)", id="the chain's wording, but no ErrorInfo"),
    pytest.param(grpc.StatusCode.PERMISSION_DENIED, "no rule allows", id="other codes"),
])
def test_what_the_server_chain_did_not_mark_stays_the_clients(code: grpc.StatusCode, details: str) -> None:
    """Wording is no contract: only the chain's google.rpc.ErrorInfo marks a refusal as the bridge's own."""
    assert not refuses_bridge_identity(_rpc_error(code, details))
    foreign = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message="x")
    foreign.details.add().Pack(error_details_pb2.ErrorInfo(reason="CALLER_REFUSED", domain="example.com"))
    other_domain = grpc.aio.AioRpcError(U, grpc.aio.Metadata(), grpc.aio.Metadata(
        *rpc_status.to_status(foreign).trailing_metadata), "x")
    assert not refuses_bridge_identity(other_domain)


def test_the_peer_checks_own_error_is_recognised() -> None:
    """Raised by the real peer check, not copied."""
    with pytest.raises(PeerIdentityError) as info:
        PeerIdentityCache("example.org").identify(None)
    assert refuses_bridge_identity(_refused(info.value))


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_own_identity_refusal_is_503_with_retry_after_and_no_www_authenticate() -> None:
    revoked = PeerIdentityError("peer certificate of spiffe://example.org/agent/bridge is revoked")
    err = from_rpc_error(_refused(revoked), "ingestor", 5.0)
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.status == http_status_for(err.code) == 503
    assert err.headers == {"Retry-After": str(MESH_RETRY_AFTER)}
    assert err.message == ("the bridge's own mesh identity was refused by ingestor: peer certificate of "
                           "spiffe://example.org/agent/bridge is revoked; retry later")
    gone = DelegationError("txn-revoked", "transaction token: its subject token was revoked")
    client = from_rpc_error(_refused(gone), "ingestor", 5.0)
    assert client.status == 401 and client.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def test_no_token_of_its_own_is_503_with_retry_after() -> None:
    err = from_call_error(TokenError("the control plane refused to issue a token: denied"), "ingestor", 5.0)
    assert err is not None and err.status == 503 and err.headers == {"Retry-After": str(MESH_RETRY_AFTER)}


# ---------------------------------------------------------------- real agents behind the real bridge
in_mesh_loop = pytest.mark.asyncio(loop_scope="module")  # the module's mesh runs in the module's loop


def _jti(mesh: BridgeMesh, token: str) -> str:
    return mesh.nodes["bridge"].verifier.inspect(token).jti


@in_mesh_loop
async def test_agent_refusing_the_bridges_own_token_is_503_the_same_request_otherwise_200(
        mesh: BridgeMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = mesh.auth()
    r = await mesh.client.post(ECHO, json={"name": "x"}, headers=auth)
    assert r.status_code == 200, r.text

    bridge = mesh.nodes["bridge"]  # its own token, but bound to alpha's certificate: alpha refuses it
    misbound = mesh.authority.issue(sub=str(bridge.spiffe_id), roles=[], audience=mesh.config.tokens.audience,
                                    ttl=300, cnf_thumbprint=mesh.nodes["alpha"].identity.thumbprint)

    async def token() -> str:
        return misbound

    tokens = bridge.tokens
    with monkeypatch.context() as patch:
        patch.setattr(tokens, "token", token)
        patch.setattr(tokens, "cached", lambda: misbound)
        for path in (ECHO, TICKS):
            r = await mesh.client.post(path, json={}, headers=auth)
            assert r.status_code == 503, r.text
            assert "www-authenticate" not in r.headers
            assert r.headers["retry-after"] == str(MESH_RETRY_AFTER)
            body: dict[str, Any] = r.json()
            assert body["code"] == "UNAVAILABLE"
            assert body["message"].startswith("the bridge's own mesh identity was refused by alpha: token is bound "
                                              "to another certificate (caller's own token")
            assert body["message"].endswith("; retry later")
    r = await mesh.client.post(ECHO, json={"name": "x"}, headers=auth)
    assert r.status_code == 200, r.text


@in_mesh_loop
async def test_agent_refusing_the_delegated_client_token_stays_401(mesh: BridgeMesh,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    token = mesh.token("carol@example.org")
    refused = _jti(mesh, token)
    verifier = mesh.nodes["alpha"].verifier  # alpha alone knows the client's token is revoked
    before = verifier.revoked
    monkeypatch.setattr(verifier, "revoked", lambda jti: jti == refused or before(jti))
    r = await mesh.client.post(ECHO, json={}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert r.json()["message"] == "transaction token: its subject token was revoked"
    r = await mesh.client.post(ECHO, json={}, headers=mesh.auth("dave@example.org"))
    assert r.status_code == 200, r.text
