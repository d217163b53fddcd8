"""gRPC's interoperability cases, through the mesh and without it (issue 16: transparency).

The cases are written from the public descriptions of gRPC's interop test cases (empty_unary,
large_unary, client_streaming, server_streaming, ping_pong, empty_stream, cancel_after_begin,
cancel_after_first_response, timeout_on_sleeping_server, status_code_and_message,
special_status_message, unimplemented_method, unimplemented_service, custom_metadata), against a test
service of our own (``interop.TestService``, its messages well-known protobuf types), run four ways:

* ``control``: a plain grpc.aio server and a plain grpc.aio channel, no mesh at all;
* ``cached``: the service served as a mesh member, called by a mesh member whose token is at hand
  (the steady state);
* ``renewed``: the caller has just renewed its certificate: the call is the first on a new connection
  (the server it reaches is checked again) and needs a token bound to the new certificate;
* ``refreshed``: the caller's token is past its refresh point (its clock moved on): the call waits for
  a new one.

In the last two the stub returns before the call has started (a deferred call); every case makes one
call, so each is such a first call. Every case passes all four ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from meshkit import renew_quietly, running_mesh

from agentmesh.runtime.calls import DeferredCall
from agentmesh.runtime.node import MeshNode

SERVICE = "interop.TestService"
POLICY = [{"name": "interop", "action": "allow", "to": ["svc"], "from": ["bridge"]}]
MODES = ["control", "cached", "renewed", "refreshed"]
INITIAL = ("x-grpc-test-echo-initial", "test_initial_metadata_value")
TRAILING = ("x-grpc-test-echo-trailing-bin", b"\x0a\x0b\x0a\x0b\x0a\x0b")
SPECIAL = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


def request(*, payload: int = 0, response_size: int | None = None, response_sizes: tuple[int, ...] = (),
            status: tuple[grpc.StatusCode, str] | None = None, sleep: float = 0) -> struct_pb2.Struct:
    """A request: ``payload`` bytes of body, the response size(s) asked for, a status to answer with,
    seconds for the server to sleep before it answers."""
    msg = struct_pb2.Struct()
    msg.update({"payload": "x" * payload})
    if response_size is not None:
        msg["response_size"] = response_size
    if response_sizes:
        msg["response_sizes"] = list(response_sizes)
    if status is not None:
        msg["status"] = {"code": status[0].value[0], "message": status[1]}
    if sleep:
        msg["sleep"] = sleep
    return msg


def response(size: int) -> struct_pb2.Struct:
    msg = struct_pb2.Struct()
    msg.update({"payload": "x" * size})
    return msg


def payload_size(msg: struct_pb2.Struct) -> int:
    return len(msg["payload"]) if "payload" in msg else 0


class TestService:
    """What gRPC's interop server does, in a few lines."""

    __test__ = False  # (not a pytest class)

    @staticmethod
    async def _echo_metadata(context: grpc.aio.ServicerContext) -> None:
        md = dict(context.invocation_metadata() or ())
        if INITIAL[0] in md:
            await context.send_initial_metadata(((INITIAL[0], md[INITIAL[0]]),))
        if TRAILING[0] in md:
            context.set_trailing_metadata(((TRAILING[0], md[TRAILING[0]]),))

    @staticmethod
    async def _status(req: struct_pb2.Struct, context: grpc.aio.ServicerContext) -> None:
        if "status" in req:
            code = next(c for c in grpc.StatusCode if c.value[0] == int(req["status"]["code"]))
            await context.abort(code, req["status"]["message"])

    async def EmptyCall(self, req: empty_pb2.Empty, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        return empty_pb2.Empty()

    async def UnaryCall(self, req: struct_pb2.Struct, context: grpc.aio.ServicerContext) -> struct_pb2.Struct:
        await self._echo_metadata(context)
        await self._status(req, context)
        return response(int(req["response_size"]) if "response_size" in req else 0)

    async def StreamingOutputCall(self, req: struct_pb2.Struct,
                                  context: grpc.aio.ServicerContext) -> AsyncIterator[struct_pb2.Struct]:
        for size in req["response_sizes"]:
            yield response(int(size))

    async def StreamingInputCall(self, reqs: AsyncIterator[struct_pb2.Struct],
                                 context: grpc.aio.ServicerContext) -> struct_pb2.Struct:
        total = 0
        async for req in reqs:
            total += payload_size(req)
        out = struct_pb2.Struct()
        out["aggregated_payload_size"] = total
        return out

    async def FullDuplexCall(self, reqs: AsyncIterator[struct_pb2.Struct],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[struct_pb2.Struct]:
        await self._echo_metadata(context)
        async for req in reqs:
            if "sleep" in req:
                await asyncio.sleep(req["sleep"])
            await self._status(req, context)
            for size in req["response_sizes"] if "response_sizes" in req else ():
                yield response(int(size))

    def handler(self) -> grpc.GenericRpcHandler:
        def codec(cls: Any) -> dict[str, Any]:
            return {"request_deserializer": cls.FromString, "response_serializer": _serialize}

        s, e = codec(struct_pb2.Struct), codec(empty_pb2.Empty)
        return grpc.method_handlers_generic_handler(SERVICE, {
            "EmptyCall": grpc.unary_unary_rpc_method_handler(self.EmptyCall, **e),
            "UnaryCall": grpc.unary_unary_rpc_method_handler(self.UnaryCall, **s),
            "StreamingOutputCall": grpc.unary_stream_rpc_method_handler(self.StreamingOutputCall, **s),
            "StreamingInputCall": grpc.stream_unary_rpc_method_handler(self.StreamingInputCall, **s),
            "FullDuplexCall": grpc.stream_stream_rpc_method_handler(self.FullDuplexCall, **s),
        })  # (UnimplementedCall is declared by the interop proto, not implemented: unimplemented_method)


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString()  # type: ignore[no-any-return]


class Stub:
    """What generated code would make for ``interop.TestService`` (and an unimplemented service)."""

    def __init__(self, channel: Any) -> None:
        def method(kind: str, name: str, cls: Any = struct_pb2.Struct, service: str = SERVICE) -> Any:
            return getattr(channel, kind)(f"/{service}/{name}", request_serializer=_serialize,
                                          response_deserializer=cls.FromString, _registered_method=True)

        self.EmptyCall = method("unary_unary", "EmptyCall", empty_pb2.Empty)
        self.UnaryCall = method("unary_unary", "UnaryCall")
        self.StreamingOutputCall = method("unary_stream", "StreamingOutputCall")
        self.StreamingInputCall = method("stream_unary", "StreamingInputCall")
        self.FullDuplexCall = method("stream_stream", "FullDuplexCall")
        self.UnimplementedCall = method("unary_unary", "UnimplementedCall", empty_pb2.Empty)
        self.UnimplementedService = method("unary_unary", "UnimplementedCall", empty_pb2.Empty,
                                           service="interop.UnimplementedService")


class Clock:
    """The caller's clock: real time, moved on by ``skew`` seconds when the test says so."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew


@dataclass
class Target:
    mode: str
    stub: Stub
    caller: MeshNode | None = None  # the calling mesh member (None: control)
    closers: list[Callable[[], Any]] = field(default_factory=list)


async def control_target() -> Target:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((TestService().handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Target("control", Stub(channel), closers=[channel.close, lambda: server.stop(0)])


@contextlib.asynccontextmanager
async def mesh_target(tmp_path: Path, mode: str) -> AsyncIterator[Target]:
    async with running_mesh(tmp_path, {"svc": {"roles": ["svc"]}}, serve=[], policy=POLICY) as m:
        svc = m.nodes["svc"] = MeshNode(m.config, "svc", check_every=0)
        await svc.start(timeout=10)
        server = svc.server(grace=0.2)
        server.add(lambda s, srv: srv.add_generic_rpc_handlers((s.handler(),)), TestService(), SERVICE)
        await server.start(svc.address)
        m.servers.append(server)
        clock = Clock()
        caller = m.nodes["bridge"] = MeshNode(m.config, "bridge", check_every=0, clock=clock)
        await caller.start(timeout=10)
        stub = Stub(caller.channels.channel("svc"))
        await stub.EmptyCall(empty_pb2.Empty(), timeout=10)  # a connection, a checked server, a token
        assert caller.tokens.cached() is not None
        if mode == "renewed":
            await renew_quietly(caller)
        elif mode == "refreshed":
            clock.skew = m.config.tokens.ttl * 0.8  # past 3/4 of the token's life: it is refreshed first
        if mode != "cached":
            assert caller.tokens.cached() is None
        yield Target(mode, stub, caller)  # (the mesh closes its nodes and servers)



@pytest.fixture(params=MODES)
async def target(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "control":
        t = await control_target()
        yield t
        for close in t.closers:
            await close()
        return
    async with mesh_target(tmp_path, request.param) as t:
        yield t


# ---------------------------------------------------------------------------------------------- the mode itself


async def test_the_first_call_starts_as_the_mode_says(target: Target) -> None:
    call = target.stub.EmptyCall(empty_pb2.Empty())
    assert isinstance(call, grpc.aio.UnaryUnaryCall)
    assert isinstance(call, DeferredCall) == (target.mode in ("renewed", "refreshed"))
    await call
    if target.caller is not None:
        assert target.caller.tokens.cached() is not None


# ---------------------------------------------------------------------------------------------- the cases


async def test_empty_unary(target: Target) -> None:
    assert await target.stub.EmptyCall(empty_pb2.Empty()) == empty_pb2.Empty()


async def test_large_unary(target: Target) -> None:
    res = await target.stub.UnaryCall(request(payload=271828, response_size=314159))
    assert payload_size(res) == 314159


async def test_client_streaming(target: Target) -> None:
    call = target.stub.StreamingInputCall()
    for size in (27182, 8, 1828, 45904):
        await call.write(request(payload=size))
    await call.done_writing()
    assert (await call)["aggregated_payload_size"] == 74922


async def test_server_streaming(target: Target) -> None:
    sizes = (31415, 9, 2653, 58979)
    call = target.stub.StreamingOutputCall(request(response_sizes=sizes))
    assert [payload_size(r) async for r in call] == list(sizes)
    assert await call.code() == grpc.StatusCode.OK


async def test_ping_pong(target: Target) -> None:
    call = target.stub.FullDuplexCall()
    for out, back in ((31415, 27182), (9, 8), (2653, 1828), (58979, 45904)):
        await call.write(request(payload=back, response_sizes=(out,)))
        assert payload_size(await call.read()) == out
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_empty_stream(target: Target) -> None:
    call = target.stub.FullDuplexCall()
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_cancel_after_begin(target: Target) -> None:
    call = target.stub.StreamingInputCall()
    assert call.cancel()
    assert call.cancelled() and call.done()
    assert await call.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_cancel_after_first_response(target: Target) -> None:
    call = target.stub.FullDuplexCall()
    await call.write(request(payload=27182, response_sizes=(31415,)))
    assert payload_size(await call.read()) == 31415
    assert call.cancel()
    assert call.cancelled()
    assert await call.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await call.read()


async def test_timeout_on_sleeping_server(target: Target) -> None:
    """The server sleeps past the caller's deadline. (The deadline is longer than the interop case's
    1 ms so that the request is surely written first: with 1 ms, grpc.aio itself, with no mesh, at times
    fails done_writing() with ExecuteBatchError, or ends the call INTERNAL "Internal error from Core".)"""
    call = target.stub.FullDuplexCall(timeout=0.5)
    await call.write(request(payload=27182, sleep=30))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_one_millisecond_deadline(target: Target) -> None:
    call = target.stub.FullDuplexCall(timeout=0.001)
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("message", ["test status message", SPECIAL],
                         ids=["status_code_and_message", "special_status_message"])
async def test_status_unary(target: Target, message: str) -> None:
    call = target.stub.UnaryCall(request(status=(grpc.StatusCode.UNKNOWN, message)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.UNKNOWN and err.value.details() == message
    assert await call.details() == message


async def test_status_code_and_message_full_duplex(target: Target) -> None:
    call = target.stub.FullDuplexCall()
    await call.write(request(status=(grpc.StatusCode.UNKNOWN, "test status message")))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.UNKNOWN and err.value.details() == "test status message"


async def test_unimplemented_method(target: Target) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await target.stub.UnimplementedCall(empty_pb2.Empty())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_unimplemented_service(target: Target) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await target.stub.UnimplementedService(empty_pb2.Empty())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_custom_metadata_unary(target: Target) -> None:
    call = target.stub.UnaryCall(request(payload=271828, response_size=314159), metadata=(INITIAL, TRAILING))
    assert payload_size(await call) == 314159
    assert INITIAL in tuple(await call.initial_metadata())
    assert TRAILING in tuple(await call.trailing_metadata())


async def test_custom_metadata_full_duplex(target: Target) -> None:
    call = target.stub.FullDuplexCall(metadata=(INITIAL, TRAILING))
    await call.write(request(payload=271828, response_sizes=(314159,)))
    await call.done_writing()
    assert payload_size(await call.read()) == 314159
    assert await call.read() is grpc.aio.EOF
    assert INITIAL in tuple(await call.initial_metadata())
    assert TRAILING in tuple(await call.trailing_metadata())
