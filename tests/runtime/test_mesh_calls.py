"""A mesh stub behaves exactly as a plain grpc.aio stub (issue 16, items 2 and 5).

Every test runs the same assertions on three channels to one mesh member serving all four call shapes:

* ``plain``: a plain ``grpc.aio.secure_channel`` (the control: what gRPC itself does), its token sent
  as call credentials;
* ``cached``: a mesh channel whose member token is at hand (the client chain runs synchronously);
* ``deferred``: a mesh channel whose member token has not arrived yet (a member's first call, right
  after a certificate renewal, in a token refresh window): the call object must still be a whole
  grpc.aio call while the chain waits for the token; ``target.release()`` lets the token arrive;
* ``renewed``: the real member that has just renewed its certificate (no token fetched ahead): a test's
  first call goes over a new connection, whose server is checked again, with a token bound to the new
  certificate fetched from the control plane (``target.release()`` does nothing: it comes when it comes).

gRPC's interop cases themselves, against a plain grpc.aio server as the control, are in test_interop.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshkit import Mesh, renew_quietly, running_mesh

from agentmesh.errors import Unavailable
from agentmesh.interceptors.client import ClientSteps
from agentmesh.runtime.channel import MeshChannels
from agentmesh.runtime.node import MeshNode
from agentmesh.v1 import agent_pb2

SERVICE = "test.Shapes"
POLICY = [{"name": "shapes", "action": "allow", "to": ["svc"], "from": ["bridge"]}]
KINDS = {"UU": "unary_unary", "US": "unary_stream", "SU": "stream_unary", "SS": "stream_stream"}
CALL_TYPES = {"UU": grpc.aio.UnaryUnaryCall, "US": grpc.aio.UnaryStreamCall,
              "SU": grpc.aio.StreamUnaryCall, "SS": grpc.aio.StreamStreamCall}
VARIANTS = ["plain", "cached", "deferred", "renewed"]
LOCALLY_CANCELLED = "Locally cancelled by application!"  # grpc.aio's details of a call cancelled by its caller


def req(text: str = "hello", task_id: str = "t") -> agent_pb2.Task:
    return agent_pb2.Task(id=task_id, input=[agent_pb2.Part(text=text)])


def event(task_id: str, text: str) -> agent_pb2.TaskEvent:
    return agent_pb2.TaskEvent(task_id=task_id, progress=text)


def text_of(request: agent_pb2.Task) -> str:
    return request.input[0].text if request.input else ""


class Shapes:
    """``test.Shapes``: one method per call shape. "sleep" makes a method wait (after its first
    response, for the response streams), "fail" makes it fail with INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.started: dict[str, int] = dict.fromkeys(KINDS, 0)

    @staticmethod
    async def _metadata(context: grpc.aio.ServicerContext, shape: str) -> None:
        await context.send_initial_metadata((("x-initial", shape.lower()),))
        context.set_trailing_metadata((("x-trailing", shape.lower()),))

    async def UU(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskEvent:
        self.started["UU"] += 1
        await self._metadata(context, "UU")
        if text_of(request) == "sleep":
            await asyncio.sleep(30)
        if text_of(request) == "fail":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused on purpose")
        return event(request.id, text_of(request))

    async def US(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.started["US"] += 1
        await self._metadata(context, "US")
        for i in range(3):
            yield event(request.id, f"{text_of(request)}-{i}")
            if text_of(request) == "sleep":
                await asyncio.sleep(30)

    async def SU(self, requests: AsyncIterator[agent_pb2.Task],
                 context: grpc.aio.ServicerContext) -> agent_pb2.TaskEvent:
        self.started["SU"] += 1
        await self._metadata(context, "SU")
        texts = [text_of(r) async for r in requests]
        if "sleep" in texts:
            await asyncio.sleep(30)
        return event("su", ",".join(texts))

    async def SS(self, requests: AsyncIterator[agent_pb2.Task],
                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.started["SS"] += 1
        await self._metadata(context, "SS")
        async for r in requests:
            if text_of(r) == "sleep":
                await asyncio.sleep(30)
            yield event(r.id, text_of(r))

    def handler(self) -> grpc.GenericRpcHandler:
        kw = {"request_deserializer": agent_pb2.Task.FromString,
              "response_serializer": agent_pb2.TaskEvent.SerializeToString}
        return grpc.method_handlers_generic_handler(SERVICE, {
            "UU": grpc.unary_unary_rpc_method_handler(self.UU, **kw),
            "US": grpc.unary_stream_rpc_method_handler(self.US, **kw),
            "SU": grpc.stream_unary_rpc_method_handler(self.SU, **kw),
            "SS": grpc.stream_stream_rpc_method_handler(self.SS, **kw),
        })


class ShapesStub:
    """What generated code would make for ``test.Shapes``."""

    UU: Any
    US: Any
    SU: Any
    SS: Any

    def __init__(self, channel: Any) -> None:
        for shape, kind in KINDS.items():
            setattr(self, shape, getattr(channel, kind)(f"/{SERVICE}/{shape}",
                                                        request_serializer=agent_pb2.Task.SerializeToString,
                                                        response_deserializer=agent_pb2.TaskEvent.FromString,
                                                        _registered_method=True))


class Tokens:
    """The member's own token source; the token arrives when the test says so."""

    def __init__(self, token: str, *, at_hand: bool) -> None:
        self._token = token
        self.arrived = asyncio.Event()
        if at_hand:
            self.arrived.set()
        self.error: Exception | None = None  # what fetching the token raises (e.g. the control plane is away)

    def cached(self) -> str | None:
        return self._token if self.arrived.is_set() and self.error is None else None

    async def token(self) -> str:
        await self.arrived.wait()
        if self.error is not None:
            raise self.error
        return self._token


@dataclass
class Target:
    variant: str
    channel: Any
    shapes: Shapes
    tokens: Tokens | None = None
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def call(self, shape: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(ShapesStub(self.channel), shape)(*args, **kwargs)

    def release(self) -> None:
        """The member's token arrives (a no-op but for ``deferred``)."""
        if self.tokens is not None:
            self.tokens.arrived.set()

    def release_soon(self, delay: float = 0.05) -> None:
        asyncio.get_running_loop().call_later(delay, self.release)

    @property
    def waits_for_token(self) -> bool:
        return self.tokens is not None and not self.tokens.arrived.is_set()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, {"svc": {"roles": ["svc"]}}, serve=["bridge"], policy=POLICY) as m:
        node = MeshNode(m.config, "svc", check_every=0)
        m.nodes["svc"] = node
        await node.start(timeout=10)
        server = node.server(grace=0.2)
        shapes = Shapes()
        server.add(lambda s, srv: srv.add_generic_rpc_handlers((s.handler(),)), shapes, SERVICE)
        await server.start(node.address)
        m.servers.append(server)
        m.agents["svc"] = shapes
        yield m


async def make_target(mesh: Mesh, variant: str) -> Target:
    bridge = mesh.nodes["bridge"]
    address = mesh.config.agent("svc").address
    token = mesh.agent_token("bridge")  # bound to the bridge's certificate, as the control plane issues it
    shapes: Shapes = mesh.agents["svc"]
    if variant == "plain":
        creds = grpc.composite_channel_credentials(bridge.identity.channel_credentials(),
                                                   grpc.access_token_call_credentials(token))
        channel = grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "svc")])
        return Target(variant, channel, shapes, closers=[channel.close])
    if variant == "renewed":
        await renew_quietly(bridge)
        assert bridge.tokens.cached() is None
        return Target(variant, bridge.channels.channel("svc"), shapes)
    tokens = Tokens(token, at_hand=variant == "cached")
    channels = MeshChannels(bridge.identity, {"svc": address},
                            steps=lambda target, files: ClientSteps("bridge", target, tokens))
    return Target(variant, channels.channel("svc"), shapes, tokens, closers=[channels.close])



@pytest.fixture(params=VARIANTS)
async def target(mesh: Mesh, request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    t = await make_target(mesh, request.param)
    yield t
    t.release()
    for close in t.closers:
        await close()




def args_for(shape: str, text: str) -> tuple[Any, ...]:
    """A call's arguments: the request of a unary-request shape; none for a stream-request shape
    (its requests are written with write())."""
    return (req(text),) if shape in ("UU", "US") else ()


async def items(it: Any) -> AsyncIterator[Any]:
    for item in it:
        yield item


# ---------------------------------------------------------------------------------------------- the call objects


@pytest.mark.parametrize("shape", KINDS)
async def test_a_stub_returns_a_grpc_aio_call_of_its_shape(target: Target, shape: str) -> None:
    multicallable = getattr(ShapesStub(target.channel), shape)
    assert isinstance(multicallable, getattr(grpc.aio, f"{KINDS[shape].title().replace('_', '')}MultiCallable"))
    call = multicallable(*args_for(shape, "hello"))
    assert isinstance(call, CALL_TYPES[shape])  # also while the mesh waits for the member's token
    assert isinstance(call, grpc.aio.Call) and isinstance(call, grpc.aio.RpcContext)
    call.cancel()


async def test_unary_unary_lifecycle(target: Target) -> None:
    call = target.call("UU", req("hi"), timeout=30)
    seen: list[Any] = []
    call.add_done_callback(seen.append)
    assert not call.done() and not call.cancelled()
    remaining = call.time_remaining()
    assert remaining is not None and 29 < remaining <= 30
    assert seen == []
    target.release()
    assert (await call).progress == "hi"
    assert call.done() and not call.cancelled()
    assert await call.code() == grpc.StatusCode.OK
    assert await call.details() == ""
    assert await call.debug_error_string() == ""
    initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
    assert isinstance(initial, grpc.aio.Metadata) and ("x-initial", "uu") in tuple(initial)
    assert isinstance(trailing, grpc.aio.Metadata) and ("x-trailing", "uu") in tuple(trailing)
    await call.wait_for_connection()
    assert len(seen) == 1 and seen[0] is call  # called once, with the call itself
    late: list[Any] = []
    call.add_done_callback(late.append)  # added once the call is over: called at once
    assert len(late) == 1 and late[0] is call
    remaining = call.time_remaining()
    assert remaining is not None and 0 < remaining < 30


async def test_a_call_without_a_timeout_has_no_deadline(target: Target) -> None:
    call = target.call("UU", req("hi"))
    assert call.time_remaining() is None
    target.release()
    await call
    assert call.time_remaining() is None


async def test_a_failed_call_reports_the_servers_status(target: Target) -> None:
    call = target.call("UU", req("fail"))
    target.release_soon()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == "refused on purpose"
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call.details() == "refused on purpose"
    assert ("x-trailing", "uu") in tuple(await call.trailing_metadata())
    assert call.done() and not call.cancelled()


# ---------------------------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("shape", KINDS)
async def test_cancel_after_begin(target: Target, shape: str) -> None:
    before = target.shapes.started[shape]
    call = target.call(shape, *args_for(shape, "sleep"))
    seen: list[Any] = []
    call.add_done_callback(seen.append)
    assert call.cancel() is True
    assert len(seen) == 1 and seen[0] is call
    assert call.cancelled() and call.done()
    assert call.cancel() is False  # already over
    target.release()  # the token arrives after the call was cancelled
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert await call.details() == LOCALLY_CANCELLED
    assert await call.debug_error_string() is None
    assert tuple(await call.initial_metadata()) == () and tuple(await call.trailing_metadata()) == ()
    if shape in ("UU", "US"):  # (grpc.aio's own wait_for_connection() of a stream request never returns here)
        with pytest.raises(asyncio.CancelledError):
            await call.wait_for_connection()
    if shape in ("UU", "SU"):
        with pytest.raises(asyncio.CancelledError):
            await call
    if shape in ("US", "SS"):
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        with pytest.raises(asyncio.CancelledError):
            async for _ in call:
                pass
    if shape in ("SU", "SS"):
        with pytest.raises(asyncio.InvalidStateError):
            await call.write(req("late"))
        await call.done_writing()  # a no-op on a call that is over
    later: list[Any] = []
    call.add_done_callback(later.append)
    assert len(later) == 1 and later[0] is call
    assert len(seen) == 1
    if target.variant == "deferred":
        await asyncio.sleep(0.1)
        assert target.shapes.started[shape] == before  # never started: it was cancelled before its token


async def test_cancel_after_first_response_unary_stream(target: Target) -> None:
    call = target.call("US", req("sleep"))
    target.release_soon()
    first = await call.read()
    assert first.progress == "sleep-0"
    assert call.cancel() is True
    assert call.cancelled() and await call.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await call.read()


async def test_cancel_after_first_response_while_iterating(target: Target) -> None:
    call = target.call("US", req("sleep"))
    target.release_soon()
    got = []
    with pytest.raises(asyncio.CancelledError):
        async for ev in call:
            got.append(ev.progress)
            call.cancel()
    assert got == ["sleep-0"]
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_cancel_after_first_response_stream_stream(target: Target) -> None:
    call = target.call("SS")
    target.release_soon()
    await call.write(req("a"))
    assert (await call.read()).progress == "a"
    await call.write(req("sleep"))
    assert call.cancel() is True
    assert call.cancelled() and await call.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    with pytest.raises(asyncio.InvalidStateError):
        await call.write(req("b"))


async def test_cancelling_the_awaiting_task_cancels_the_call(target: Target) -> None:
    before = target.shapes.started["UU"]
    call = target.call("UU", req("sleep"))

    async def wait() -> Any:
        return await call

    waiter = asyncio.ensure_future(wait())
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert call.cancelled() and call.done()
    assert await call.code() == grpc.StatusCode.CANCELLED
    if target.variant == "deferred":
        target.release()
        await asyncio.sleep(0.1)
        assert target.shapes.started["UU"] == before


async def test_cancelling_a_task_waiting_for_the_status_leaves_the_call_alone(target: Target) -> None:
    call = target.call("UU", req("sleep"))
    status = asyncio.ensure_future(call.code())
    await asyncio.sleep(0.05)
    status.cancel()
    with pytest.raises(asyncio.CancelledError):
        await status
    assert not call.done() and not call.cancelled()
    before = target.shapes.started["UU"]
    target.release()
    await asyncio.sleep(0.1)
    assert not call.done()
    if target.variant == "deferred":
        assert target.shapes.started["UU"] == before + 1  # it went on
    call.cancel()


# ---------------------------------------------------------------------------------------------- deadlines


async def test_the_deadline_ends_a_call_whose_token_does_not_come(target: Target) -> None:
    before = target.shapes.started["UU"]
    call = target.call("UU", req("sleep"), timeout=0.3)  # deferred: the token never comes in time
    seen: list[Any] = []
    call.add_done_callback(seen.append)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert call.done() and not call.cancelled()
    assert call.time_remaining() == 0
    assert len(seen) == 1 and seen[0] is call
    with pytest.raises(grpc.aio.AioRpcError):
        await call.wait_for_connection()
    if target.variant == "deferred":
        target.release()
        await asyncio.sleep(0.1)
        assert target.shapes.started["UU"] == before


@pytest.mark.parametrize("target", ["deferred", "renewed"], indirect=True)  # the variants whose calls wait
@pytest.mark.parametrize("shape", KINDS)
async def test_time_waiting_for_the_token_counts_against_the_deadline(target: Target, shape: str) -> None:
    started = time.monotonic()
    call = target.call(shape, *args_for(shape, "sleep"), timeout=0.8)
    asyncio.get_running_loop().call_later(0.5, target.release)
    if shape in ("SU", "SS"):
        await call.write(req("sleep"))
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.15  # not 0.5 s of waiting + a whole 0.8 s timeout


async def test_a_timeout_of_zero_fails_at_once(target: Target) -> None:
    call = target.call("SU", iter([req("a")]), 0.0)
    target.release_soon()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert call.time_remaining() == 0


# ---------------------------------------------------------------------------------------------- the shapes


async def test_unary_stream_by_iteration(target: Target) -> None:
    call = target.call("US", req("x"))
    target.release_soon()
    assert [ev.progress async for ev in call] == ["x-0", "x-1", "x-2"]
    assert await call.code() == grpc.StatusCode.OK
    assert ("x-trailing", "us") in tuple(await call.trailing_metadata())


async def test_unary_stream_by_read(target: Target) -> None:
    call = target.call("US", req("y"))
    target.release_soon()
    assert [(await call.read()).progress for _ in range(3)] == ["y-0", "y-1", "y-2"]
    assert await call.read() is grpc.aio.EOF
    assert await call.read() is grpc.aio.EOF
    with pytest.raises(grpc.aio.UsageError):  # the iterator and read() do not mix
        call.__aiter__()


async def test_read_and_iteration_do_not_mix_before_the_call_starts(target: Target) -> None:
    call = target.call("US", req("z"))
    iterator = call.__aiter__()
    assert call.__aiter__() is iterator
    with pytest.raises(grpc.aio.UsageError):
        await call.read()
    target.release()
    assert [ev.progress async for ev in iterator] == ["z-0", "z-1", "z-2"]


async def test_stream_unary_with_an_iterator_and_a_positional_timeout(target: Target) -> None:
    call = target.call("SU", iter([req("a"), req("b")]), 5.0)
    remaining = call.time_remaining()
    assert remaining is not None and 4 < remaining <= 5
    target.release()
    assert (await call).progress == "a,b"


async def test_stream_unary_with_keyword_arguments(target: Target) -> None:
    call = target.call("SU", request_iterator=items([req("c"), req("d")]), timeout=5.0, metadata=(("x-any", "1"),),
                       credentials=None, wait_for_ready=None, compression=None)
    remaining = call.time_remaining()
    assert remaining is not None and 4 < remaining <= 5
    target.release()
    assert (await call).progress == "c,d"


async def test_stream_unary_by_writing(target: Target) -> None:
    call = target.call("SU")
    target.release_soon()
    await call.write(req("a"))  # deferred: waits for the token, then writes
    await call.write(req("b"))
    await call.done_writing()
    await call.done_writing()  # idempotent
    with pytest.raises(asyncio.InvalidStateError):
        await call.write(req("c"))  # half closed
    assert (await call).progress == "a,b"
    assert ("x-initial", "su") in tuple(await call.initial_metadata())


async def test_writing_to_a_call_given_an_iterator_is_refused(target: Target) -> None:
    call = target.call("SU", iter([req("a")]))
    with pytest.raises(grpc.aio.UsageError):
        await call.write(req("b"))
    with pytest.raises(grpc.aio.UsageError):
        await call.done_writing()
    target.release()
    assert (await call).progress == "a"


async def test_stream_stream_by_writing_and_reading(target: Target) -> None:
    call = target.call("SS")
    target.release_soon()
    await call.write(req("a"))
    assert (await call.read()).progress == "a"
    await call.write(req("b"))
    assert (await call.read()).progress == "b"
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert ("x-trailing", "ss") in tuple(await call.trailing_metadata())


async def test_stream_stream_with_an_iterator_and_positional_arguments(target: Target) -> None:
    call = target.call("SS", iter([req("a", "1"), req("b", "2")]), 5.0, (("x-any", "1"),))
    remaining = call.time_remaining()
    assert remaining is not None and 4 < remaining <= 5
    target.release_soon()
    assert [(ev.task_id, ev.progress) async for ev in call] == [("1", "a"), ("2", "b")]


async def test_stream_stream_with_keyword_arguments(target: Target) -> None:
    call = target.call("SS", request_iterator=items([req("c")]), timeout=5.0)
    target.release_soon()
    assert [ev.progress async for ev in call] == ["c"]
    await call.wait_for_connection()


async def test_unary_requests_take_the_same_arguments_as_grpc(target: Target) -> None:
    for shape in ("UU", "US"):
        with pytest.raises(TypeError):
            target.call(shape, req("a"), 5.0)  # as in grpc.aio, the timeout of a unary request is keyword-only
    call = target.call("UU", request=req("kw"), timeout=5.0, metadata=(("x-any", "1"),), credentials=None,
                       wait_for_ready=None, compression=None)
    target.release()
    assert (await call).progress == "kw"
    stream = target.call("US", request=req("kw"), timeout=5.0)
    assert [ev.progress async for ev in stream] == ["kw-0", "kw-1", "kw-2"]


# ---------------------------------------------------------------------------------------------- the mesh's own failures


async def test_a_token_that_cannot_be_had_ends_the_call_with_a_status(mesh: Mesh) -> None:
    """No member token (the control plane is away): the call is over with the status of the mesh's error;
    awaiting it raises that error, as before (callers such as the bridge tell it from the agent's status)."""
    t = await make_target(mesh, "deferred")
    try:
        assert t.tokens is not None
        t.tokens.error = Unavailable("control plane unavailable (UNAVAILABLE)")
        call = t.call("UU", req("hi"), timeout=5)
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        t.release()
        with pytest.raises(Unavailable):
            await call
        assert call.done() and not call.cancelled()
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        assert await call.details() == "control plane unavailable (UNAVAILABLE)"
        assert len(seen) == 1 and seen[0] is call
    finally:
        for close in t.closers:
            await close()


# ---------------------------------------------------------------------------------------------- a real member


async def test_the_first_calls_of_a_new_member_are_whole_grpc_calls(mesh: Mesh) -> None:
    """A member that has no token yet (just started, just renewed, in its token's refresh window)."""
    node = MeshNode(mesh.config, "bridge", check_every=0)  # no token fetched yet
    try:
        stub = ShapesStub(node.channels.channel("svc"))
        assert node.tokens.cached() is None
        call = stub.UU(req("sleep"), timeout=30)
        assert isinstance(call, grpc.aio.UnaryUnaryCall)
        remaining = call.time_remaining()
        assert remaining is not None and 29 < remaining <= 30
        assert call.cancel() and call.cancelled()
        assert await call.code() == grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await stub.UU(req("first"))).progress == "first"  # fetches the token
        assert node.tokens.cached() is not None
        assert [ev.progress async for ev in stub.SS(iter([req("x")]), 5.0)] == ["x"]
    finally:
        await node.close()


# ------------------------------------------------------------------------- stubs made per call (runtime/facade.py)


async def test_stubs_made_per_call_share_their_multicallables(mesh: Mesh) -> None:
    """``node.stub(...)`` per call (the way agent code calls) makes no new multicallable, nor a new
    grpc.aio one on the same connection; other arguments (a raw-bytes stub) get their own."""
    bridge = mesh.nodes["bridge"]
    first, second = ShapesStub(bridge.channels.channel("svc")), ShapesStub(bridge.channels.channel("svc"))
    assert first.UU is second.UU and first.SS is second.SS and first.UU is not first.US
    assert (await first.UU(req("one"))).progress == "one"
    assert (await second.UU(req("two"))).progress == "two"
    assert first.UU._callable is not None and first.UU._callable is second.UU._callable  # made once, on first use

    raw = bridge.channels.channel("svc").unary_unary(f"/{SERVICE}/UU", _registered_method=True)
    assert raw is not first.UU  # no serialisers: bytes in, bytes out
    answer = await raw(req("bytes").SerializeToString())
    assert isinstance(answer, bytes) and agent_pb2.TaskEvent.FromString(answer).progress == "bytes"


async def test_a_kept_multicallable_follows_a_renewal(mesh: Mesh) -> None:
    """After a renewal, a stub made per call goes over the new connection, with a token bound to the
    new certificate (the server admits it), though its multicallable was made before."""
    bridge = mesh.nodes["bridge"]
    before = ShapesStub(bridge.channels.channel("svc")).UU
    assert (await before(req("before"))).progress == "before"
    old = before._channel
    await renew_quietly(bridge)
    after = ShapesStub(bridge.channels.channel("svc")).UU
    assert after is before
    assert (await after(req("after"), timeout=10)).progress == "after"
    assert after._channel is not old and after._channel is bridge.channels.current("svc")[0]


def test_unhashable_arguments_make_a_multicallable_that_is_not_kept() -> None:
    from agentmesh.runtime.facade import MeshChannel

    facade = MeshChannel(None, "svc")  # type: ignore[arg-type]  # (no call is made)
    odd = facade.unary_unary("/x/Y", options=["not", "hashable"])
    assert odd is not facade.unary_unary("/x/Y", options=["not", "hashable"])
    assert facade.unary_unary("/x/Y") is facade.unary_unary("/x/Y")
