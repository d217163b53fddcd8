"""Helpers shared by the test suites: a CA in a temp dir, identities, an echo agent, servers on port 0."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import httpx
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from agentmesh.context import current_call
from agentmesh.identity import SpiffeId
from agentmesh.pki import CertificateAuthority, IssuedCert, write_identity
from agentmesh.pki.certs import build_certificate, dump_cert, dump_key, leaf_profile, new_key
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

TD = "example.org"


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def identity_dir(ca: CertificateAuthority, root: Path, name: str, **kw: object) -> Path:
    out = root / "identities" / name
    write_identity(ca.issue(name, **kw), out)  # type: ignore[arg-type]
    return out


def custom_leaf(
    ca: CertificateAuthority,
    out: Path,
    name: str,
    *,
    trust_domain: str = TD,
    not_before: float | None = None,
    not_after: float | None = None,
    eku: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    is_ca: bool = False,
    self_signed: bool = False,
) -> Path:
    """A leaf signed by the real issuing CA (or self-signed) with one property bent, for attack tests."""
    now = time.time()
    key = new_key()
    profile = leaf_profile(SpiffeId(trust_domain, f"/agent/{name}"), (name,), eku=tuple(eku), is_ca=is_ca)
    cert = build_certificate(
        subject_cn=name, subject_key=key, profile=profile,
        not_before=utc(now - 60 if not_before is None else not_before),
        not_after=utc(now + 3600 if not_after is None else not_after),
        issuer_cert=None if self_signed else ca.cert, issuer_key=key if self_signed else ca.key,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "cert.pem").write_bytes(dump_cert(cert) if self_signed else dump_cert(cert, ca.cert))
    (out / "key.pem").write_bytes(dump_key(key))
    (out / "bundle.pem").write_bytes(ca.bundle)
    return out


def raw_channel(address: str, server_name: str, *, bundle: bytes, cert_dir: Path | None) -> grpc.aio.Channel:
    """A channel that bypasses the mesh client API: any credentials, for imposter tests."""
    if cert_dir is None:
        creds = grpc.ssl_channel_credentials(root_certificates=bundle)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=bundle,
            private_key=(cert_dir / "key.pem").read_bytes(),
            certificate_chain=(cert_dir / "cert.pem").read_bytes(),
        )
    return grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", server_name)])


class EchoAgent(agent_pb2_grpc.AgentServicer):
    """Answers with the verified caller's SPIFFE ID; counts the calls that reached it."""

    def __init__(self, name: str = "b") -> None:
        self.name = name
        self.calls = 0

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        self.calls += 1
        call = current_call()
        text = request.input[0].text if request.input else ""
        return agent_pb2.TaskResult(
            task_id=request.id,
            status=agent_pb2.TASK_STATUS_COMPLETED,
            output=[agent_pb2.Part(text=call.peer_spiffe_id or ""), agent_pb2.Part(text=text)],
        )

    async def InvokeStream(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        self.calls += 1
        call = current_call()
        for i in range(3):
            yield agent_pb2.TaskEvent(task_id=request.id, status=agent_pb2.TASK_STATUS_WORKING,
                                      progress=f"{i}:{call.peer_spiffe_id}")
        yield agent_pb2.TaskEvent(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED,
                                  result=agent_pb2.TaskResult(task_id=request.id,
                                                              status=agent_pb2.TASK_STATUS_COMPLETED))

    async def Describe(
        self, request: agent_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentCard:
        return agent_pb2.AgentCard(name=self.name)


def task(text: str = "hello", task_id: str = "t1") -> agent_pb2.Task:
    return agent_pb2.Task(id=task_id, input=[agent_pb2.Part(text=text)])


def new_ca(root: Path, td: str = TD) -> CertificateAuthority:
    return CertificateAuthority.init(root / "ca", td)


__all__ = ["TD", "EchoAgent", "IssuedCert", "custom_leaf", "identity_dir", "new_ca", "raw_channel", "task", "utc"]


#: a document for the example workflow (ingestor -> summarizer -> validator): three sections it summarizes
DOCUMENT = """# Agent meshes
Agent meshes carry calls between autonomous agents. Every agent holds a certificate from the mesh CA.
Mutual TLS proves the identity of both agents on every call.

# Tokens and policy
Each agent receives a short-lived token bound to its certificate. A stolen token is useless to another agent.
Policy rules decide which agent may call which method, and everything else is denied.

# Operations
Rate limits protect agents from bursts of calls. Audit spans record every decision in one trace.
Operators read the audit trail to see who called whom and why the call was allowed.
"""


async def wait_bridge_ready(client: httpx.AsyncClient, proc: asyncio.subprocess.Process) -> None:
    """Until the bridge process ``proc`` answers ``/healthz`` through ``client``: polls for an event (the
    bridge listening), it does not wait for time to pass; fails if the process exits or never comes up."""
    for _ in range(400):
        if proc.returncode is not None:
            raise AssertionError("the bridge process exited")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the bridge process did not come up")
