"""The audit spans a real mesh sends to a real OTLP receiver follow the OpenTelemetry semantic conventions
v1.44 (issue 15): the example workflow (bridge -> ingestor -> summarizer -> validator, over mTLS) and
the REST bridge under uvicorn over HTTPS, every member exporting to the collector's TraceService on a
plaintext port 0 (``audit.otlp_endpoint: http://...``).

What arrives, decoded from the ExportTraceServiceRequests themselves: one trace across the bridge's
HTTP span and every client and server span of the workflow, each RPC span with ``rpc.system.name``,
the fully-qualified ``rpc.method`` as its name, ``rpc.response.status_code``, ``server.address`` and
``server.port`` (client) or ``network.peer.address`` (server); the bridge's span named by its route
template; the request id the response carries on the bridge's span and every agent's; a call the
validator refuses with status UNSET on the server (ERROR on the client); and no span of the control
plane's housekeeping (trust stream, token refreshes) nor of a probe that succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
import yaml
from otlpkit import otlp_receiver
from support import DOCUMENT

from agentmesh.bridge import create_app
from agentmesh.bridge.server import uvicorn_options
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.runtime.agent import run_agent
from agentmesh.runtime.control import start_control
from agentmesh.tokens import TokenAuthority
from examples.workflow.prepare import prepare

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_grpc = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
from opentelemetry.proto.common.v1 import common_pb2  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402

SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT
UNSET, ERROR = trace_pb2.Status.STATUS_CODE_UNSET, trace_pb2.Status.STATUS_CODE_ERROR
INVOKE = "agentmesh.v1.Agent/Invoke"
EXCHANGE = "agentmesh.v1.TokenService/ExchangeTransactionToken"
HOUSEKEEPING = ("IdentityService/WatchTrust", "TokenService/IssueAgentToken", "GetKeySet", "ListRevoked")
WORKFLOW = ("ingestor", "summarizer", "validator")


class Receiver(trace_grpc.TraceServiceServicer):  # type: ignore[misc,name-defined]
    """An OpenTelemetry collector's trace endpoint: keeps every ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # (the generated name)
        with self._lock:
            self.requests.append(request)
        return trace_service.ExportTraceServiceResponse()

    def spans(self) -> list[dict[str, Any]]:
        """Every span received, flattened: service (the resource's service.name), name, kind, ids (hex),
        status code, attributes and event names, decoded from the protobuf."""
        with self._lock:
            requests = list(self.requests)
        out = []
        for request in requests:
            for rs in request.resource_spans:
                service = _attributes(rs.resource.attributes)["service.name"]
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append({
                            "service": service, "name": s.name, "kind": s.kind, "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex() or None,
                            "status": s.status.code, "attributes": _attributes(s.attributes),
                            "events": [(e.name, _attributes(e.attributes)) for e in s.events],
                        })
        return out


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind is not None else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with otlp_receiver(trace_grpc.add_TraceServiceServicer_to_server, r) as endpoint:
        yield r, endpoint


@contextlib.asynccontextmanager
async def workflow_mesh(root: Path, endpoint: str) -> AsyncIterator[tuple[MeshConfig, httpx.AsyncClient]]:
    """The example workflow's mesh (control plane, three agents, the bridge over HTTPS), every member's
    audit going to the JSONL log and to ``endpoint``; all of it stopped (and flushed) on the way out."""
    path = prepare(root)
    doc = yaml.safe_load(path.read_text())
    doc["audit"] = {**doc["audit"], "exporters": ["jsonl", "otlp"], "otlp_endpoint": endpoint}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    config = load_config(path)
    control = await start_control(config)
    agents = [asyncio.create_task(run_agent(config, name)) for name in WORKFLOW]
    opts = uvicorn_options(config)
    opts.pop("workers")
    bridge = uvicorn.Server(uvicorn.Config(create_app(config), **opts))  # its lifespan runs the bridge's node
    serving = asyncio.ensure_future(bridge.serve())
    try:
        while not bridge.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        bundle = ssl.create_default_context(cafile=str(config.identity_dir("bridge") / "bundle.pem"))
        async with httpx.AsyncClient(base_url=f"https://localhost:{opts['port']}", verify=bundle,
                                     timeout=10) as http:
            yield config, http
    finally:
        bridge.should_exit = True
        await serving  # the bridge's node closes: its sink exports what it holds
        for task in agents:
            task.cancel()
        await asyncio.gather(*agents, return_exceptions=True)
        await control.stop(0)
        control.sink.shutdown(5)


async def test_spans_received_over_otlp_follow_the_semantic_conventions(tmp_path: Path,
                                                                         receiver: tuple[Receiver, str]) -> None:
    collector, endpoint = receiver
    async with workflow_mesh(tmp_path, endpoint) as (config, http):
        unready = 0
        for _ in range(400):  # the agents start serving (readiness: their health over mTLS)
            r = await http.get("/readyz")
            if r.status_code == 200:
                break
            unready += 1
            await asyncio.sleep(0.05)
        assert r.status_code == 200, r.text
        for _ in range(3):
            assert (await http.get("/healthz")).status_code == 200
        authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
        token = authority.issue(sub="alice@example.org", roles=["client"], audience="agentmesh", ttl=60)
        auth = {"Authorization": f"Bearer {token}"}
        rid = "semconv-req-1"
        r = await http.post(f"/v1/agents/ingestor/{INVOKE}", headers={**auth, "x-request-id": rid},
                            json={"id": "doc-1", "input": [{"text": DOCUMENT}]})
        assert r.status_code == 200, r.text
        assert r.json()["output"][1]["data"]["verdict"] == "pass"
        assert r.headers["x-request-id"] == rid
        trace_id = r.headers["traceparent"].split("-")[1]
        denied = await http.post(f"/v1/agents/validator/{INVOKE}", headers=auth, json={"id": "x"})
        assert denied.status_code == 403, denied.text  # policy: no-outside-validator
        denied_trace = denied.headers["traceparent"].split("-")[1]
    spans = collector.spans()  # every member stopped: all of it was exported
    assert spans, "nothing reached the OTLP receiver"

    # -- one trace: the bridge's HTTP span, then a client and a server span per hop, parent to child
    ours = [s for s in spans if s["trace_id"] == trace_id]
    by = {(s["service"], s["kind"], s["attributes"].get("rpc.method")): s for s in ours}
    http_span = by[("bridge", SERVER, None)]
    chain = [http_span]
    for caller, callee in (("bridge", "ingestor"), ("ingestor", "summarizer"), ("summarizer", "validator")):
        chain += [by[(caller, CLIENT, INVOKE)], by[(callee, SERVER, INVOKE)]]
    assert http_span["parent"] is None
    assert [s["parent"] for s in chain[1:]] == [s["span_id"] for s in chain[:-1]]
    exchange = by[("control", SERVER, EXCHANGE)]  # the bridge's exchange at the control plane: same trace
    assert exchange["name"] == EXCHANGE

    # -- every RPC span: the v1.44 names, and none of the old ones
    rpc = [s for s in spans if s["kind"] == CLIENT or (s["kind"] == SERVER and "http.route" not in s["attributes"]
                                                        and "http.request.method" not in s["attributes"])]
    assert len(rpc) >= 7
    for s in rpc:
        attrs = s["attributes"]
        assert attrs["rpc.system.name"] == "grpc", s
        assert s["name"] == attrs["rpc.method"] and not s["name"].startswith("/"), s
        assert attrs["rpc.response.status_code"] in {c.name for c in grpc.StatusCode}, s
        assert not {"rpc.system", "rpc.service", "rpc.grpc.status_code"} & set(attrs), s
        if s["kind"] == CLIENT:
            target = config.agent(attrs["agentmesh.target"]).address
            assert (attrs["server.address"], attrs["server.port"]) == (target.rpartition(":")[0],
                                                                       int(target.rpartition(":")[2])), s
        else:
            assert attrs["network.peer.address"] == "127.0.0.1" and isinstance(attrs["network.peer.port"], int), s
    for s in chain[1:]:
        assert s["attributes"]["rpc.response.status_code"] == "OK" and "error.type" not in s["attributes"]
        assert s["status"] == UNSET, s

    # -- the bridge's HTTP span: its route template, the scheme, the status; the request id everywhere
    h = http_span["attributes"]
    route = f"/v1/agents/ingestor/{INVOKE}"  # the catalog's route template (here without a variable)
    assert http_span["name"] == f"POST {route}" and h["http.route"] == route
    assert (h["http.request.method"], h["url.scheme"], h["http.response.status_code"]) == ("POST", "https", 200)
    assert (h["server.address"], h["client.address"]) == ("localhost", "127.0.0.1")
    assert http_span["status"] == UNSET and h["enduser.id"] == "alice@example.org"
    for s in chain:
        assert s["attributes"]["agentmesh.request_id"] == rid, (s["service"], s["kind"])
    txn = h["agentmesh.txn"]
    assert {s["attributes"].get("agentmesh.txn") for s in [*chain, exchange]} == {txn}  # on every span

    # -- a refusal: UNSET on the server (the server did its job), ERROR on the client, 403 no HTTP error
    refused = [s for s in spans if s["trace_id"] == denied_trace]
    (server,) = [s for s in refused if s["service"] == "validator"]
    assert server["status"] == UNSET and server["name"] == INVOKE
    assert server["attributes"]["rpc.response.status_code"] == server["attributes"]["error.type"] == \
        "PERMISSION_DENIED"
    assert server["attributes"]["agentmesh.decision"] == "deny"
    assert server["attributes"]["agentmesh.rule"] == "no-outside-validator"
    events = dict(server["events"])
    assert events["agentmesh.denied"]["stage"] == "policy"
    assert set(events.get("exception", {})) <= {"exception.type"}  # the refusal's type, never its message
    (client,) = [s for s in refused if s["service"] == "bridge" and s["kind"] == CLIENT]
    assert client["status"] == ERROR and client["attributes"]["error.type"] == "PERMISSION_DENIED"
    (edge,) = [s for s in refused if s["service"] == "bridge" and s["kind"] == SERVER]
    assert edge["status"] == UNSET and edge["attributes"]["http.response.status_code"] == 403
    assert "error.type" not in edge["attributes"]

    # -- by default: no housekeeping span, no span of a probe that succeeded, none of the agents' health
    names = [s["name"] for s in spans]
    assert not [n for n in names if n.endswith(HOUSEKEEPING)], names
    assert not [n for n in names if n.startswith("grpc.health.")], names
    probes = [s for s in spans if s["attributes"].get("http.route") in ("/healthz", "/readyz")]
    assert len(probes) == unready and all(s["attributes"]["http.response.status_code"] == 503 for s in probes)

    # -- no secret in any span
    text = repr(spans)
    assert token not in text and token.rsplit(".", 1)[1] not in text and "Bearer" not in text
