"""A stock a2a-sdk client of the travel agent behind the bridge: no agentmesh import.

    TOKEN=... python -m examples.a2a.client https://localhost:8443/v1/agents/travel \\
        --ca examples/a2a/.mesh/ca/bundle.pem "three days in Lisbon"

It finds the agent by its card (``/.well-known/agent-card.json`` under the agent's URL), checks the
card's signature with the key the bridge publishes (``jku``: ``/.well-known/jwks.json``), then sends
the message over the binding the card prefers (JSON-RPC; ``--binding HTTP+JSON`` for REST), asking
for the ``plan-trip`` skill, with ``Authorization: Bearer $TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid

import httpx
from a2a.client import ClientConfig, create_client
from a2a.client.errors import A2AClientError
from a2a.helpers.proto_helpers import get_artifact_text
from a2a.types import a2a_pb2
from a2a.utils.signing import create_signature_verifier
from jwt import PyJWK, PyJWKSet


def verifier(http: httpx.Client) -> object:
    def key(kid: str | None, jku: str | None) -> PyJWK:
        if not jku or not jku.startswith("https://"):
            raise ValueError("the card's signature names no https key set")
        keys = PyJWKSet.from_dict(http.get(jku).raise_for_status().json())
        return next(k for k in keys.keys if k.key_id == kid)

    return create_signature_verifier(key, ["ES256", "EdDSA"])


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="the agent's URL at the bridge")
    ap.add_argument("text")
    ap.add_argument("--ca", required=True, help="the mesh CA bundle (the bridge's certificate)")
    ap.add_argument("--skill", default="plan-trip")
    ap.add_argument("--binding", default=None, help="JSONRPC (default) or HTTP+JSON")
    args = ap.parse_args()
    token = os.environ.get("TOKEN")
    if not token:
        print("client: set TOKEN to a bearer token (agentmesh token issue ...)", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(verify=args.ca) as sync_http:
        async with httpx.AsyncClient(verify=args.ca, headers=headers, timeout=30) as http:
            config = ClientConfig(httpx_client=http, streaming=False,
                                  supported_protocol_bindings=[args.binding] if args.binding else ["JSONRPC",
                                                                                                   "HTTP+JSON"])
            client = await create_client(args.url, config, signature_verifier=verifier(sync_http))
            request = a2a_pb2.SendMessageRequest(message=a2a_pb2.Message(
                message_id=str(uuid.uuid4()), role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text=args.text)]))
            request.metadata.update({"skill": args.skill})
            async for event in client.send_message(request):
                task = event.task if event.HasField("task") else None
                if task is not None and task.status.state == a2a_pb2.TASK_STATE_COMPLETED:
                    print(f"task {task.id}: {get_artifact_text(task.artifacts[0])}")
            await client.close()
    return 0


def run() -> int:
    try:
        return asyncio.run(main())
    except (A2AClientError, httpx.HTTPError, ValueError) as e:
        print(f"client: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
