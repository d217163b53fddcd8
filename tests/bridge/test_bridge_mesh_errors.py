"""An agent refusing the bridge's OWN mesh identity is the mesh's failure (503, Retry-After), never a
401 that sends a client with a good token off to re-authenticate; refusing the client's delegated
token stays a 401. The rule as a table, then against real agents behind the real bridge."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from bridgekit import BridgeMesh

from agentmesh.bridge.errors import MESH_RETRY_AFTER, from_call_error, from_rpc_error, refuses_bridge_identity
from agentmesh.errors import PeerIdentityError, TokenError, http_status_for
from agentmesh.interceptors.identity import PeerIdentityCache

U = grpc.StatusCode.UNAUTHENTICATED
M = "/bridgetest.v1.Probe/Echo"
ECHO = "/v1/agents/alpha/bridgetest.v1.Probe/Echo"
TICKS = "/v1/agents/alpha/bridgetest.v1.Probe/Ticks"

#: (code, details as the agent's server chain words them, is it about the bridge's own identity?)
TABLE = [
    # the bridge's own token (interceptors/auth.py)
    (U, f"token is bound to another certificate (caller's own token, {M})", True),
    (U, f"token expired (caller's own token, {M})", True),
    (U, f"token revoked (caller's own token, {M})", True),
    (U, f"token kid unknown (caller's own token, {M})", True),
    (U, f"missing bearer token for {M}", True),
    (U, f"a caller's own token must come from the mesh issuer ({M})", True),
    (U, f"delegation chain without a subject token for {M}", True),
    (U, "delegation chain too long", True),
    # the bridge's own certificate (interceptors/identity.py, identity.py, trust.py)
    (U, "no verified client certificate (mutual TLS is required)", True),
    (U, "peer certificate has expired", True),
    (U, "peer certificate is outside its validity period", True),
    (U, "peer certificate of spiffe://example.org/agent/bridge is revoked", True),
    (U, "peer presented a CA certificate as its identity", True),
    (U, "peer belongs to trust domain 'other.org', not 'example.org'", True),
    (U, "mesh member bridge is revoked", True),
    # the client's delegated token: the client's to fix
    (U, f"token expired (delegated subject token, {M})", False),
    (U, f"token revoked (delegated subject token, {M})", False),
    (U, f"token is for another audience (delegated subject token, {M})", False),
    (U, "a delegated subject token must belong to a principal, not to an agent", False),
    # a handler's own verdict on the client, or nothing said
    (U, "session expired, sign in again", False),
    (U, "", False),
    (U, None, False),
    # other codes are mapped by the one table in agentmesh/errors.py
    (grpc.StatusCode.PERMISSION_DENIED, f"token expired (caller's own token, {M})", False),
    (grpc.StatusCode.UNAVAILABLE, "peer certificate has expired", False),
    (grpc.StatusCode.OK, "missing bearer token", False),
]


@pytest.mark.parametrize(("code", "details", "own"), TABLE, ids=[f"{c.name}:{d}" for c, d, _ in TABLE])
def test_which_refusals_are_the_bridges_own(code: grpc.StatusCode, details: str | None, own: bool) -> None:
    assert refuses_bridge_identity(code, details) is own


def test_the_peer_checks_wording_is_recognised() -> None:
    """Worded by the real peer check, not copied: a changed message would show here."""
    with pytest.raises(PeerIdentityError) as info:
        PeerIdentityCache("example.org").identify(None)
    assert refuses_bridge_identity(U, info.value.message)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_own_identity_refusal_is_503_with_retry_after_and_no_www_authenticate() -> None:
    err = from_rpc_error(_rpc_error(U, "peer certificate of spiffe://example.org/agent/bridge is revoked"),
                         "ingestor", 5.0)
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.status == http_status_for(err.code) == 503
    assert err.headers == {"Retry-After": str(MESH_RETRY_AFTER)}
    assert err.message == ("the bridge's own mesh identity was refused by ingestor: peer certificate of "
                           "spiffe://example.org/agent/bridge is revoked; retry later")
    client = from_rpc_error(_rpc_error(U, f"token expired (delegated subject token, {M})"), "ingestor", 5.0)
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
    assert r.json()["message"] == f"token revoked (delegated subject token, {M})"
    r = await mesh.client.post(ECHO, json={}, headers=mesh.auth("dave@example.org"))
    assert r.status_code == 200, r.text
