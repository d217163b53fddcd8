"""The server chain's machinery: wrap a method handler once, for all four call shapes.

A stage has three hooks:

* ``before(call, context)`` runs once per call before the handler (identity, token, policy, limit); a
  call whose request is one message (unary-unary, unary-stream) has it in ``call.request`` by then;
* ``inspect(call, request)`` runs on every request message (the payload guard);
* ``respond(call, response)`` runs on every response (the unary result, each streamed item), for the
  methods the stage ``reviews`` (A2A task ownership), and returns the response to send.

Which stages run for a method is decided once, when its handler is wrapped: ``applies_to(method)`` and
``reviews(method)``. A stage that does not apply to a method costs it nothing per call; a method no
stage reviews pays for the hook an empty loop per call and an ``is None`` test per streamed response.

:class:`ServerChain` is the one grpc.aio interceptor that runs them, inside the outermost step
(the audit span). Per-call findings live in the contextvar of ``agentmesh.context``.

Every call shape runs as one coroutine inside that step: a handler that streams responses is driven
with the reader/writer API (each response written with ``context.write``), so its last write, and the
cancellation a client or a deadline brings, happen inside the span, which records the status the
client sees. A method the server does not serve goes through the chain too (the certificate, the
token, the policy, the span) before it is UNIMPLEMENTED: a caller without a valid token learns nothing
about which methods exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect as _inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import grpc

from agentmesh.context import CallContext, _set, maybe_current_call
from agentmesh.errors import MeshError, Unavailable
from agentmesh.interceptors.active import ActiveCalls
from agentmesh.interceptors.audit import AuditStage
from agentmesh.interceptors.handed import CheckedContext, Respond
from agentmesh.interceptors.stage import Stage
from agentmesh.interceptors.status import status_of

__all__ = ["ENDED", "EXEMPT_PREFIXES", "ServerChain", "Stage", "rewrap"]

Behavior = Callable[..., Any]


def _as_async_iter(result: Any) -> AsyncIterator[Any]:
    if hasattr(result, "__aiter__"):
        return result  # type: ignore[no-any-return]

    async def gen() -> AsyncIterator[Any]:
        for item in result:
            yield item

    return gen()


Run = Callable[[Behavior, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def rewrap(handler: grpc.RpcMethodHandler[Any, Any], unary: Run, stream: Run, *,
           encoded: bool = False) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape whose behaviour goes through ``unary`` (it returns the response) or,
    for the shapes that stream responses, ``stream`` (it writes them: see :func:`write_responses`).
    ``encoded``: ``unary`` returns the response already serialised (so a response that cannot be is a
    failure inside the chain, on its span), and grpc is given no serialiser for it."""
    unary_out = None if encoded else handler.response_serializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def uu(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await unary(inner, request, context)

        return grpc.unary_unary_rpc_method_handler(uu, handler.request_deserializer, unary_out)
    if handler.stream_unary is not None:
        inner = handler.stream_unary

        async def su(request_iter: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await unary(inner, request_iter, context)

        return grpc.stream_unary_rpc_method_handler(su, handler.request_deserializer, unary_out)
    # a coroutine function (not an async generator): grpc.aio awaits it, and it writes the responses
    if handler.unary_stream is not None:
        inner = handler.unary_stream

        async def us(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await stream(inner, request, context)

        return grpc.unary_stream_rpc_method_handler(us, handler.request_deserializer, handler.response_serializer)
    assert handler.stream_stream is not None  # a handler has one of the four behaviours
    inner = handler.stream_stream

    async def ss(request_iter: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await stream(inner, request_iter, context)

    return grpc.stream_stream_rpc_method_handler(ss, handler.request_deserializer, handler.response_serializer)


async def write_responses(inner: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Runs a response-streaming behaviour, writing each response with ``context.write`` (what grpc.aio
    does for an async generator handler, here in the caller's coroutine, so inside the chain). The
    stages that review responses see them through the context's ``write``
    (:class:`agentmesh.interceptors.handed.CheckedContext`), yielded or written by the handler alike.

    If a write or the handler is interrupted (the call cancelled, its deadline passed), the handler's
    generator is closed here, in the call's context, rather than whenever it is garbage collected.
    """
    result = inner(request, context)
    if _inspect.isawaitable(result):  # a handler that writes with context.write() and returns None
        result = await result
        if result is None:
            return
    if not hasattr(result, "__aiter__"):  # a synchronous generator (or any iterable)
        for item in result:
            await context.write(item)
        return
    try:
        async for item in result:
            await context.write(item)
    except BaseException:
        close = getattr(result, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        raise


#: what a failed onward call means for the call that made it: the member it called is gone or going
_ONWARD_UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def _onward(call: CallContext, err: grpc.aio.AioRpcError) -> MeshError | None:
    """What a handler's failed onward call, left unhandled, means: a member it depends on could not be
    reached or went away mid-call (UNAVAILABLE, so the caller may retry, not UNKNOWN); None for any other
    status (the handler's own failure, UNKNOWN as before)."""
    if err.code() in _ONWARD_UNAVAILABLE:
        return Unavailable(f"{call.agent} could not finish: a call it made failed ({err.code().name})")
    return None


def _cancelled(call: CallContext) -> MeshError | None:
    """What a CancelledError in a handler means: a revocation ended this call (its error); a call the
    handler made was cancelled under it (its peer was revoked and the connection dropped): UNAVAILABLE,
    so the caller is answered; or this very call was cancelled (by its client or the server): None."""
    if call.ended_by is not None:
        return call.ended_by
    task = asyncio.current_task()
    if task is not None and task.cancelling() == 0:
        return Unavailable(f"{call.agent} could not finish: a call it depended on was cancelled")
    return None


#: methods served without the chain (mutual TLS still applies): liveness must not need a token
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
#: CANCELLATION_POINT: when a client cancels a call, its request stream ends (as if the client had
#: finished sending) a moment before grpc.aio cancels the call's task, so a handler that stops at the
#: end of its requests (the usual bidi loop) returns normally, and would be recorded OK. After a
#: handler that read a request stream returns, one turn of the event loop lets that cancellation
#: arrive while the call is still inside the chain (best effort: one delivered later is not seen).

#: the message of the UNIMPLEMENTED status of a method the server does not serve (grpc's own)
UNREGISTERED_MESSAGE = "Method not found!"

class _Plan(NamedTuple):
    """The stages of one method: those that run, those that inspect requests, those that review responses."""

    stages: tuple[Stage, ...]
    inspectors: tuple[Stage, ...]
    reviewers: tuple[Stage, ...]

    @classmethod
    def of(cls, stages: Sequence[Stage], method: str) -> _Plan:
        mine = tuple(s for s in stages if s.applies_to(method))
        return cls(mine, tuple(s for s in mine if s.inspects_requests), tuple(s for s in mine if s.reviews(method)))


#: what ends a call under its handler: its task cancelled (by grpc.aio, for its client or its deadline),
#: or a write failing (grpc.aio.InternalError: the call is gone)
ENDED = (asyncio.CancelledError, grpc.aio.InternalError)


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, UNREGISTERED_MESSAGE)


class ServerChain(grpc.aio.ServerInterceptor):
    """The whole server chain as one grpc.aio interceptor: ``around`` wraps the call, then ``stages``
    run in list order before the handler, and the inspecting stages see every request message.

    The exempt methods (health) pass ``exempt`` alone (by default the stages that say they guard them:
    the certificate checks). A method the server does not serve is answered UNIMPLEMENTED only after
    ``unregistered`` (the stages that say who is calling and whether it may call; by default the exempt
    ones), inside ``around``: it is refused and audited like any
    other call, and no request message is read.

    The wrapped handler is built once per method and cached, with the stages that apply to the method
    and those that review its responses. Per call, the chain is one coroutine (:meth:`_serve`): the span,
    each stage's decision, the handler and the span's end, with no coroutine layer of its own per stage
    or around the handler.
    """

    def __init__(self, around: AuditStage, stages: Sequence[Stage], *, active: ActiveCalls | None = None,
                 unregistered: Sequence[Stage] | None = None, exempt: Sequence[Stage] | None = None) -> None:
        self.around = around
        self.active = active if active is not None else ActiveCalls()
        self.stages = tuple(stages)
        self.exempt_stages = tuple(s for s in self.stages if s.guards_exempt) if exempt is None else tuple(exempt)
        self.unregistered_stages = self.exempt_stages if unregistered is None else tuple(unregistered)
        # by method name (registered methods only, as the audit stage's attributes), with its handler
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}
        # one handler for every method nobody serves, whatever the call's shape (raw bytes, never read)
        nobody = _Plan(self.unregistered_stages, (), ())
        self._unregistered: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_stream_rpc_method_handler(
            functools.partial(self._serve, nobody, True, False, False, _unimplemented))
        self._unregistered_exempt: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_stream_rpc_method_handler(
            self._unregistered_exempt_call)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        exempt = handler_call_details.method.startswith(EXEMPT_PREFIXES)
        if exempt and not self.exempt_stages:
            return handler
        _set(self.around.open(handler_call_details))  # same Context for the handler call (grpc.aio)
        if handler is None:
            return self._unregistered_exempt if exempt else self._unregistered
        method = handler_call_details.method
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        if exempt:  # health: the certificate checks (a revoked peer gets nothing), no token, no span
            wrapped = rewrap(handler, self._exempt_unary, self._exempt_stream)
        else:
            streaming = handler.stream_unary is not None or handler.stream_stream is not None
            plan = _Plan.of(self.stages, method)
            encode = handler.response_serializer
            wrapped = rewrap(handler, functools.partial(self._serve, plan, streaming, False, True, encode=encode),
                             functools.partial(self._serve, plan, streaming, True, True), encoded=encode is not None)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def _unregistered_exempt_call(self, request_iter: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self._exempt_checks(context)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, UNREGISTERED_MESSAGE)

    async def _exempt_checks(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        call = maybe_current_call()
        assert call is not None
        try:
            for stage in self.exempt_stages:
                await stage.before(call, context)
        except MeshError as e:
            code, message, md = status_of(e)
            await context.abort(code, message, trailing_metadata=md)

    async def _exempt_unary(self, inner: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._exempt_checks(context)
        return await inner(request, context)

    async def _exempt_stream(self, inner: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self._exempt_checks(context)
        await write_responses(inner, request, context)

    @staticmethod
    def _requests(call: CallContext, request: Any, streaming: bool, inspectors: tuple[Stage, ...]) -> Any:
        if not inspectors:
            return request
        if not streaming:
            for stage in inspectors:
                stage.inspect(call, request)
            return request

        async def checked() -> AsyncIterator[Any]:
            async for message in _as_async_iter(request):
                for stage in inspectors:
                    stage.inspect(call, message)
                yield message

        return checked()

    async def _serve(self, plan: _Plan, streaming: bool, writes: bool, registered: bool, inner: Behavior,
                     request: Any, context: grpc.aio.ServicerContext[Any, Any], *,
                     encode: Callable[[Any], bytes] | None = None) -> Any:
        """One call, all of it: the span, the stages, the handler (``writes``: it streams responses,
        written here with ``context.write``), and the span's end with the status the client sees.
        ``encode``: the unary response's serialiser, run here (a response it refuses fails the call
        inside the chain: the span then says UNKNOWN, as the client sees), as grpc.aio would: only while
        the handler has set no status other than OK (else grpc sends no response)."""
        stages, inspectors, reviewers = plan
        around = self.around
        call = maybe_current_call()
        assert call is not None
        opened = around.start(call, context, registered)
        failed = True
        ended: grpc.StatusCode | None = None
        try:
            around.check_sink()
            if not streaming:
                call.request = request
            for stage in stages:
                await stage.before(call, context)
            task = self.active.add(call)
            try:
                if writes:
                    respond = _reviewing(call, reviewers) if reviewers else None
                    # responses go through the handed context's write(), which reviews them
                    handed = CheckedContext(context, call, inspectors if streaming else (), respond) \
                        if (streaming and inspectors) or respond is not None else context
                    await write_responses(inner, self._requests(call, request, streaming, inspectors), handed)
                    result = None
                else:
                    handed = CheckedContext(context, call, inspectors, None) if streaming and inspectors \
                        else context
                    result = await inner(self._requests(call, request, streaming, inspectors), handed)
                if streaming:  # see CANCELLATION_POINT
                    await asyncio.sleep(0)
                for stage in reviewers if not writes else ():
                    result = await stage.respond(call, result)
                if encode is not None and _still_ok(context.code()):
                    result = encode(result)
            except asyncio.CancelledError:
                if (error := _cancelled(call)) is None:
                    raise  # this call itself was cancelled
                raise error from None
            except grpc.aio.AioRpcError as e:  # a call the handler made failed, and the handler let it through
                if (error := _onward(call, e)) is None:
                    raise
                raise error from None
            finally:
                self.active.discard(task)
            failed = False
            return result
        except MeshError as e:  # the exception's type recorded as trace.use_span does; the span's status is
            opened.span.fail(e, set_status=False)  # the finish's, from the status the call ended with
            await around.fail(call, e, context)
        except ENDED as e:
            if isinstance(e, Exception):
                opened.span.fail(e, set_status=False)
            ended = around.ended(call)
            raise
        except Exception as e:
            opened.span.fail(e, set_status=False)
            raise
        finally:
            around.finish(call, opened, context, failed, ended)


def _still_ok(code: Any) -> bool:
    """Whether a handler has set no status, or OK (``context.code()``: a StatusCode, or its integer)."""
    return code is None or code == grpc.StatusCode.OK or code == grpc.StatusCode.OK.value[0]


def _reviewing(call: CallContext, reviewers: tuple[Stage, ...]) -> Respond:
    async def respond(item: Any) -> Any:
        for stage in reviewers:
            item = await stage.respond(call, item)
        return item

    return respond
