"""Transparency (issue 16, items 6 and 7), against a real mesh over mutual TLS.

* A method the server does not serve goes through the chain like any other: identity, token and the
  audit span come first, so a peer without a valid token learns nothing (UNAUTHENTICATED, not
  UNIMPLEMENTED), and every attempt is audited.
* The status on a call's audit span is the status its client sees, in every call shape: a handler
  that aborts with (or sets) an integer code, a deadline that expires in the handler, a call its
  client cancels.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc._cython.cygrpc import ExecuteBatchError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshkit import Mesh, running_mesh
from support import raw_channel, task

from agentmesh.audit.spans import SERVER_ERROR_CODES
from agentmesh.runtime.node import MeshNode
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

AGENTS = {"svc": {"roles": ["svc"]}, "back": {"roles": ["back"]}}
POLICY = [{"name": "bridge-calls-svc", "action": "allow", "to": ["svc"], "from": ["bridge"]},
          {"name": "svc-calls-back", "action": "allow", "to": ["back"], "from": ["svc"]}]
BEHAVIOUR = "x-test-behaviour"  # what the handler does, whatever the call shape
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]  # 5: the integer a handler may abort with

INVOKE = "/agentmesh.v1.Agent/Invoke"
INVOKE_STREAM = "/agentmesh.v1.Agent/InvokeStream"
UPLOAD = "/shapes.v1.Shapes/Upload"  # client streaming (a generic handler)
CHAT = "/shapes.v1.Shapes/Chat"  # bidirectional (a generic handler)


class Shapes(agent_pb2_grpc.AgentServicer):
    """Every call shape; what each call does is its ``x-test-behaviour`` metadata:

    ``abort-int``     aborts with an integer code (NOT_FOUND's 5)
    ``set-code-int``  sets an integer code (and details), then returns normally
    ``sleep``         waits (for its deadline, or its client's cancel)
    ``onward``        calls agent back's Invoke, which sleeps (the served call's deadline bounds that call)
    ``overrun``       blocks the event loop past a 0.5 s deadline (CPU-bound work), then goes on
    ``echo``          answers (bidi: echoes every request until the requests end)

    Streaming shapes first answer (or read) one message, then behave. (Invoke also takes the behaviour
    from its input text, for calls between members, which forward no such metadata.)
    """

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.sleeping = asyncio.Event()

    async def _behave(self, context: grpc.aio.ServicerContext, what: str | None = None) -> None:
        what = dict(context.invocation_metadata() or ()).get(BEHAVIOUR, what)
        if what == "onward":
            await self.node.stub("back", agent_pb2_grpc.AgentStub).Invoke(task("sleep"))
        elif what == "overrun":
            time.sleep(0.8)  # nothing can cancel it meanwhile
        elif what == "abort-int":
            await context.abort(NOT_FOUND, "no such thing")
        elif what == "set-code-int":
            context.set_code(NOT_FOUND)
            context.set_details("no such thing")
        elif what == "sleep":
            self.sleeping.set()
            await asyncio.sleep(30)

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        await self._behave(context, request.input[0].text if request.input else None)
        return agent_pb2.TaskResult(task_id=request.id)

    async def InvokeStream(self, request: agent_pb2.Task,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.TaskEvent]:
        yield agent_pb2.TaskEvent(task_id=request.id, progress="first")
        await self._behave(context)
        for i in range(2):
            yield agent_pb2.TaskEvent(task_id=request.id, progress=f"step {i}")

    async def upload(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        async for _ in requests:
            break
        await self._behave(context)
        return b"done"

    async def chat(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        if dict(context.invocation_metadata() or ()).get(BEHAVIOUR) == "echo":
            async for message in requests:  # the usual bidi loop: until the requests end
                yield message
            return
        async for message in requests:
            yield message
            break
        await self._behave(context)
        yield b"last"


class ShapesHandler(grpc.GenericRpcHandler):
    """Client-streaming and bidirectional methods the Agent service has none of (raw bytes)."""

    def __init__(self, shapes: Shapes) -> None:
        self.handlers = {
            UPLOAD: grpc.stream_unary_rpc_method_handler(shapes.upload),
            CHAT: grpc.stream_stream_rpc_method_handler(shapes.chat),
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(handler_call_details.method)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, AGENTS, serve=["bridge"], policy=POLICY) as m:
        for name in AGENTS:
            node = m.nodes[name] = MeshNode(m.config, name, check_every=0)
            await node.start(timeout=10)
            shapes = m.agents[name] = Shapes(node)
            server = node.server(grace=0.2)
            server.add(agent_pb2_grpc.add_AgentServicer_to_server, shapes, "agentmesh.v1.Agent")
            server.server.add_generic_rpc_handlers((ShapesHandler(shapes),))
            await server.start(node.address)
            m.servers.append(server)
        yield m


Spans = list[dict[str, Any]]


def spans(mesh: Mesh) -> Spans:
    mesh.flush()
    return [json.loads(line) for line in mesh.audit_path.read_text().splitlines() if line.strip()]


async def server_span(mesh: Mesh, trace_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """svc's server span of the call sent with ``trace_id`` (it ends once the handler's task ends)."""

    def of_the_call(recorded: Spans) -> Spans:
        return [r for r in recorded if r["kind"] == "server" and r["trace_id"] == trace_id
                and r["attributes"].get("agentmesh.agent") == "svc"]

    until = time.monotonic() + timeout
    while not (found := of_the_call(spans(mesh))) and time.monotonic() < until:
        await asyncio.sleep(0.05)
    assert len(found) == 1, f"expected one server span of the call, got {found}"
    return found[0]


def recorded_status(span: dict[str, Any]) -> grpc.StatusCode:
    code = grpc.StatusCode[span["attributes"]["rpc.response.status_code"]]
    assert span["attributes"].get("error.type") == (None if code == grpc.StatusCode.OK else code.name)
    # a server span is ERROR only when the server failed (grpc.md): not for a refusal, nor a cancel
    assert span["status"] == ("ERROR" if code in SERVER_ERROR_CODES else "OK"), (code, span["status"])
    return code


def unserved(span: dict[str, Any]) -> bool:
    """The span of a call to a method the server does not serve: its name is the caller's choice, not
    recorded anywhere (rpc.method _OTHER, span name "grpc")."""
    return span["name"] == "grpc" and span["attributes"]["rpc.method"] == "_OTHER" and \
        "rpc.method_original" not in span["attributes"]


def metadata(mesh: Mesh, token: str | None, trace_id: str, behaviour: str | None = None) -> list[tuple[str, str]]:
    md = [("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")]
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    if behaviour is not None:
        md.append((BEHAVIOUR, behaviour))
    return md


def channel(mesh: Mesh, peer: str = "bridge") -> grpc.aio.Channel:
    return raw_channel(mesh.config.agent("svc").address, "svc", bundle=mesh.ca.bundle,
                       cert_dir=mesh.config.identity_dir(peer))


# ---------------------------------------------------------------------------------------------- item 6

UNREGISTERED = ["/agentmesh.v1.Agent/NoSuchMethod", "/no.such.Service/M"]


async def call_unregistered(mesh: Mesh, method: str, token: str | None, *, streaming: bool = False,
                            peer: str = "bridge") -> tuple[grpc.StatusCode, str, str]:
    """The client's status and details of a call to ``method`` with ``token``, and its trace id."""
    trace_id = secrets.token_hex(16)
    md = metadata(mesh, token, trace_id)
    async with channel(mesh, peer) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if streaming:
                async for _ in ch.unary_stream(method)(b"", metadata=md, timeout=5):
                    pass
            else:
                await ch.unary_unary(method)(task().SerializeToString(), metadata=md, timeout=5)
    return err.value.code(), err.value.details() or "", trace_id


@pytest.mark.parametrize("method", UNREGISTERED)
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "server-streaming"])
async def test_an_unregistered_method_without_a_token_is_unauthenticated(mesh: Mesh, method: str,
                                                                          streaming: bool) -> None:
    code, details, trace_id = await call_unregistered(mesh, method, None, streaming=streaming)
    assert code == grpc.StatusCode.UNAUTHENTICATED, details  # not UNIMPLEMENTED: no hint what exists
    assert "missing bearer token" in details
    span = await server_span(mesh, trace_id)
    assert unserved(span) and recorded_status(span) == grpc.StatusCode.UNAUTHENTICATED
    assert method.lstrip("/") not in json.dumps(span) and span["status"] == "OK"  # a refusal: status UNSET
    assert span["attributes"]["agentmesh.peer.spiffe_id"].endswith("/agent/bridge")
    assert [e["attributes"]["stage"] for e in span["events"] if e["name"] == "agentmesh.denied"] == ["token"]


@pytest.mark.parametrize("method", UNREGISTERED)
async def test_an_unregistered_method_with_a_forged_token_is_unauthenticated(mesh: Mesh, method: str) -> None:
    code, details, trace_id = await call_unregistered(mesh, method, mesh.agent_token("svc"))  # not bridge's
    assert code == grpc.StatusCode.UNAUTHENTICATED, details
    span = await server_span(mesh, trace_id)
    assert recorded_status(span) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", UNREGISTERED)
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "server-streaming"])
async def test_an_unregistered_method_with_a_valid_token_is_unimplemented_and_audited(
        mesh: Mesh, method: str, streaming: bool) -> None:
    code, details, trace_id = await call_unregistered(mesh, method, mesh.agent_token("bridge"), streaming=streaming)
    assert code == grpc.StatusCode.UNIMPLEMENTED, details
    span = await server_span(mesh, trace_id)
    assert unserved(span) and recorded_status(span) == grpc.StatusCode.UNIMPLEMENTED
    assert span["status"] == "ERROR"  # UNIMPLEMENTED: one of the server errors
    assert span["attributes"]["enduser.id"].endswith("/agent/bridge")
    assert not [e for e in span["events"] if e["name"] == "agentmesh.denied"]


@pytest.mark.parametrize("method", [*UNREGISTERED, INVOKE])
async def test_a_caller_the_policy_refuses_cannot_tell_which_methods_exist(mesh: Mesh, method: str) -> None:
    code, details, trace_id = await call_unregistered(mesh, method, mesh.agent_token("svc"), peer="svc")
    assert code == grpc.StatusCode.PERMISSION_DENIED, details  # svc may not call itself: whatever the method
    span = await server_span(mesh, trace_id)
    assert recorded_status(span) == grpc.StatusCode.PERMISSION_DENIED
    assert span["attributes"]["agentmesh.decision"] == "deny"


async def test_an_unregistered_health_method_needs_no_token_and_is_unimplemented(mesh: Mesh) -> None:
    """The health service is served without a token (liveness): its unknown methods answer as grpc does."""
    code, details, _ = await call_unregistered(mesh, "/grpc.health.v1.Health/NoSuchMethod", None)
    assert code == grpc.StatusCode.UNIMPLEMENTED, details
    async with channel(mesh) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_registered_method_is_unchanged(mesh: Mesh) -> None:
    trace_id = secrets.token_hex(16)
    async with channel(mesh) as ch:
        stub = agent_pb2_grpc.AgentStub(ch)
        res = await stub.Invoke(task(), metadata=metadata(mesh, mesh.agent_token("bridge"), trace_id), timeout=5)
    assert res.task_id == "t1"
    span = await server_span(mesh, trace_id)
    assert recorded_status(span) == grpc.StatusCode.OK and span["attributes"]["agentmesh.decision"] == "allow"


# ---------------------------------------------------------------------------------------------- item 7

Run = Callable[[grpc.aio.Channel, list[tuple[str, str]], float, Shapes, bool], Any]


async def _finish(call: Any, cancel: bool, shapes: Shapes, first: Callable[[], Any] | None) -> grpc.StatusCode:
    """Drives ``call`` to its end (cancelling it once the handler sleeps, with ``cancel``); the client's status."""
    try:
        if first is not None:
            await first()
        if cancel:
            await asyncio.wait_for(shapes.sleeping.wait(), 5)
            call.cancel()
        if hasattr(call, "__await__"):
            await call
        else:  # a response stream
            while await call.read() is not grpc.aio.EOF:
                pass
    except (grpc.aio.AioRpcError, asyncio.CancelledError, ExecuteBatchError):
        # ExecuteBatchError: grpc.aio's own race (a plain channel too) when write() or done_writing() meets a
        # call its deadline has just ended; the call's status is what counts
        pass
    code: grpc.StatusCode = await call.code()
    return code


async def run_unary(ch: grpc.aio.Channel, md: list[tuple[str, str]], timeout: float, shapes: Shapes,
                    cancel: bool) -> grpc.StatusCode:
    call = ch.unary_unary(INVOKE)(task().SerializeToString(), metadata=md, timeout=timeout)
    return await _finish(call, cancel, shapes, None)


async def run_server_stream(ch: grpc.aio.Channel, md: list[tuple[str, str]], timeout: float, shapes: Shapes,
                            cancel: bool) -> grpc.StatusCode:
    call = ch.unary_stream(INVOKE_STREAM)(task().SerializeToString(), metadata=md, timeout=timeout)

    async def first() -> None:
        await call.read()
    return await _finish(call, cancel, shapes, first)


async def run_client_stream(ch: grpc.aio.Channel, md: list[tuple[str, str]], timeout: float, shapes: Shapes,
                            cancel: bool) -> grpc.StatusCode:
    call = ch.stream_unary(UPLOAD)(metadata=md, timeout=timeout)

    async def first() -> None:
        await call.write(b"one")
        if not cancel:
            await call.done_writing()
    return await _finish(call, cancel, shapes, first)


async def run_bidi(ch: grpc.aio.Channel, md: list[tuple[str, str]], timeout: float, shapes: Shapes,
                   cancel: bool) -> grpc.StatusCode:
    call = ch.stream_stream(CHAT)(metadata=md, timeout=timeout)

    async def first() -> None:
        await call.write(b"one")
        assert await call.read() == b"one"
        if not cancel:
            await call.done_writing()
    return await _finish(call, cancel, shapes, first)


SHAPES: dict[str, Run] = {"unary": run_unary, "server-streaming": run_server_stream,
                          "client-streaming": run_client_stream, "bidi": run_bidi}


async def status_seen_and_recorded(mesh: Mesh, shape: str, behaviour: str, *, timeout: float = 5.0,
                                   cancel: bool = False) -> tuple[grpc.StatusCode, grpc.StatusCode]:
    shapes: Shapes = mesh.agents["svc"]
    shapes.sleeping.clear()
    trace_id = secrets.token_hex(16)
    md = metadata(mesh, mesh.agent_token("bridge"), trace_id, behaviour)
    async with channel(mesh) as ch:
        seen = await SHAPES[shape](ch, md, timeout, shapes, cancel)
    return seen, recorded_status(await server_span(mesh, trace_id))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("behaviour", ["abort-int", "set-code-int"])
async def test_an_integer_status_code_is_recorded_as_the_client_sees_it(mesh: Mesh, shape: str,
                                                                        behaviour: str) -> None:
    seen, recorded = await status_seen_and_recorded(mesh, shape, behaviour)
    assert (seen, recorded) == (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_deadline_expiring_in_the_handler_is_recorded_deadline_exceeded(mesh: Mesh, shape: str) -> None:
    seen, recorded = await status_seen_and_recorded(mesh, shape, "sleep", timeout=0.5)
    assert (seen, recorded) == (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_deadline_expiring_in_a_call_the_handler_makes_is_recorded_deadline_exceeded(
        mesh: Mesh, shape: str) -> None:
    """The handler's own call (bound by the served call's deadline) fails first, and the handler with it."""
    for _ in range(3):  # whichever of the two ends first, on each run
        seen, recorded = await status_seen_and_recorded(mesh, shape, "onward", timeout=0.5)
        assert (seen, recorded) == (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_handler_that_overruns_its_deadline_is_recorded_deadline_exceeded(mesh: Mesh, shape: str) -> None:
    seen, recorded = await status_seen_and_recorded(mesh, shape, "overrun", timeout=0.5)
    assert (seen, recorded) == (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_call_its_client_cancels_is_recorded_cancelled(mesh: Mesh, shape: str) -> None:
    seen, recorded = await status_seen_and_recorded(mesh, shape, "sleep", cancel=True)
    assert (seen, recorded) == (grpc.StatusCode.CANCELLED, grpc.StatusCode.CANCELLED)


async def test_a_cancelled_bidi_echo_is_recorded_cancelled(mesh: Mesh) -> None:
    """The usual bidi handler (echo until the requests end) when its client cancels mid-stream."""
    shapes: Shapes = mesh.agents["svc"]
    trace_id = secrets.token_hex(16)
    md = metadata(mesh, mesh.agent_token("bridge"), trace_id, "echo")
    async with channel(mesh) as ch:
        call = ch.stream_stream(CHAT)(metadata=md, timeout=5)
        await call.write(b"one")
        assert await call.read() == b"one"
        call.cancel()
        seen = await call.code()
    del shapes
    assert (seen, recorded_status(await server_span(mesh, trace_id))) == \
        (grpc.StatusCode.CANCELLED, grpc.StatusCode.CANCELLED)


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_call_that_ends_well_is_recorded_ok(mesh: Mesh, shape: str) -> None:
    seen, recorded = await status_seen_and_recorded(mesh, shape, "echo")
    assert (seen, recorded) == (grpc.StatusCode.OK, grpc.StatusCode.OK)
