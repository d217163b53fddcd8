"""A bearer token sent as ``X-Request-Id`` is not a request id: the bridge replaces it with a fresh one, as it
replaces any other unfit value, so the token reaches neither the response, nor the access log, nor the agents'
metadata, and the log line and the spans agree on the id. The same request with a plain id keeps it."""

from __future__ import annotations

import json
import logging
import re

import pytest
from bridgekit import BridgeMesh
from test_bridge_spans import of_trace

from agentmesh.audit.spans import safe_request_id

ECHO = "/v1/agents/alpha/bridgetest.v1.Probe/Echo"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"  # header.payload.signature: in the id alphabet


@pytest.mark.parametrize(("value", "kept"), [
    ("req-123", "req-123"),
    ("4bf92f35-77b3-4da6:a3ce/929d+0e0e=4736@edge", "4bf92f35-77b3-4da6:a3ce/929d+0e0e=4736@edge"),
    (JWT, None),
    (JWT.split(".")[0], None),  # a JWT's header alone is still one (redact_text masks it)
    ("id-" + JWT, None),
    ("bad id\twith spaces", None),
    ("x" * 129, None),
])
def test_a_request_id_is_kept_only_when_nothing_in_it_would_be_redacted(value: str, kept: str | None) -> None:
    assert safe_request_id(value) == kept


@pytest.mark.asyncio(loop_scope="module")
async def test_a_token_as_x_request_id_is_replaced_everywhere_a_plain_id_is_kept(
        mesh: BridgeMesh, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentmesh.bridge.access")
    token = mesh.token("rid@example.org")  # a real bearer token (no '_' needed: the signature may have one)
    for sent in ("req-123", JWT, token):
        caplog.clear()
        r = await mesh.client.post(ECHO, json={}, headers={**mesh.auth("rid@example.org"), "x-request-id": sent})
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        forwarded = r.json()["metadata"]["x-request-id"]
        (access,) = [m for m in caplog.messages if m.startswith(f"POST {ECHO} ")]
        found = await of_trace(mesh, r.headers["traceparent"], 3)
        hops = [s for s in found if (s["service"], s["kind"]) in {("bridge", "server"), ("bridge", "client"),
                                                                   ("alpha", "server")}]
        assert len(hops) == 3, found
        recorded = {s["attributes"].get("agentmesh.request_id") for s in hops}
        if sent == "req-123":
            assert rid == forwarded == sent and access.endswith(f" request_id={sent}") and recorded == {sent}
        else:
            assert re.fullmatch(r"[0-9a-f]{32}", rid), rid  # a fresh id, as for an invalid one
            assert forwarded == rid and access.endswith(f" request_id={rid}") and recorded == {rid}
            assert sent not in access and sent not in json.dumps(found) and sent not in r.text
