"""Machine-made request bodies: the bridge's reading and transcoding answer 400, 413 or 415, nothing else.

Arbitrary bytes, arbitrary JSON, JSON shaped like the probe's messages (every proto3 JSON type), deep
nesting and mutated valid bodies, with arbitrary Content-Type and Content-Length headers, path variables
and query parameters, go through the bridge's own request path: ``Gateway.read_json`` (415, 413), then
``parse_json`` and ``build_request`` (400) for the probe's routes. Each example either builds a message
(which then encodes back to JSON and transcodes to the same message) or raises an :class:`HttpError`
with one of those statuses, within a time limit; any other exception or a hang is a failure.

The default run is small and derandomized; the ``slow`` variants run many more random examples when
``CI=true`` or ``AGENTMESH_SLOW=1``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from bridgekit import probe_modules
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from hypothesis import settings
from hypothesis import strategies as st
from properties import profiles, run, time_limit
from starlette.requests import Request

from agentmesh.bridge.checks import MAX_DEPTH, check_depth
from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.gateway import Gateway
from agentmesh.bridge.routes import HttpRule, http_rules
from agentmesh.bridge.transcode import EMPTY, build_request, parse_json, to_json

PROFILES = profiles(50, 500)

MAX_BODY = 2048
SECONDS = 5.0  # per example: far above the few milliseconds one takes, so only a hang trips it
ALLOWED = {400, 413, 415}


# ---------------------------------------------------------------------- routes of the probe
@dataclass(frozen=True)
class Route:
    name: str
    message: type[Message]
    rule: HttpRule | None  # None: the default route (the whole body is the request)
    params: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return self.name


def routes() -> list[Route]:
    pb, _ = probe_modules()
    methods = pb.DESCRIPTOR.services_by_name["Probe"].methods_by_name
    echo, put, get = (http_rules(methods[m])[0] for m in ("Echo", "Put", "Get"))
    assert (echo.body, put.body, get.body) == ("*", "payload", "")
    return [Route("default EchoRequest", pb.EchoRequest, None), Route("default Empty", empty_pb2.Empty, None),
            Route("post /v1/echo/{name} body *", pb.EchoRequest, echo, ("name",)),
            Route("put /v1/names/{name} body payload", pb.EchoRequest, put, ("name",)),
            Route("get /v1/things/{id}", pb.GetRequest, get, ("id",))]


def field_names(message: type[Message]) -> list[str]:
    names: set[str] = set()
    stack, seen = [message.DESCRIPTOR], set()
    while stack:
        desc = stack.pop()
        if desc.full_name in seen:
            continue
        seen.add(desc.full_name)
        for f in desc.fields:
            names |= {f.name, f.json_name}
            if f.message_type is not None:
                stack.append(f.message_type)
    return sorted(names) or ["unknownField"]


# ---------------------------------------------------------------------- strategies
SCALARS = st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70) \
    | st.floats() | st.text(max_size=12) | st.sampled_from(
        ["COLOR_RED", "1", "-0", "1e3", "0x1", "\uff11", " 1", "1_0", "AAEC", "AAE=", "a-_b", "2020-01-01T00:00:00Z",
         "1.5s", "-1s", "foo.bar,baz", "NaN", "Infinity", "3.4028235e+38", "\u0000", "\ud800x"])


def shaped_json(names: list[str]) -> st.SearchStrategy[Any]:
    """JSON values whose objects mostly use the probe's field names."""
    keys = st.sampled_from(names) | st.text(max_size=6)
    return st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=4),
                        max_leaves=8)


@st.composite
def bodies(draw: st.DrawFn, names: list[str]) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "shaped", "mutated", "deep", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=MAX_BODY + 64))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "deep":
        depth = draw(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3) | st.integers(0, 2000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"inner":{"child":', "}}")]))
        body = opener * depth + draw(st.sampled_from(["1", '"[{"', "[]", ""])) + closer * depth
        return body.encode()[: draw(st.integers(0, MAX_BODY * 4))]
    doc = draw(shaped_json(names) if kind in ("shaped", "mutated") else
               st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3)
                            | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=10))
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == "mutated" and raw:
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(raw)))
            op = draw(st.sampled_from(["insert", "delete", "replace"]))
            piece = draw(st.binary(min_size=1, max_size=3) | st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\",
                                                                               b",", b":", b"\xff", b"\xc3"]))
            raw = raw[:i] + piece + raw[i + (op != "insert"):] if op != "delete" else raw[:i] + raw[i + 1:]
    return raw


CONTENT_TYPES = st.sampled_from([
    None, "application/json", "application/json; charset=utf-8", "application/json;charset=UTF8",
    'application/json; charset="utf-8"', "application/problem+json", "APPLICATION/JSON",
    "application/json; charset=latin-1", "text/plain", "multipart/form-data; boundary=x", "", ";",
    "application/json; charset"]) | st.text(max_size=30).filter(lambda t: "\n" not in t and "\r" not in t)


@dataclass(frozen=True)
class Example:
    route: Route
    content_type: str | None
    content_length: str | None
    chunks: tuple[bytes, ...]
    params: dict[str, str]
    query: tuple[tuple[str, str], ...]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@st.composite
def examples(draw: st.DrawFn, all_routes: list[Route]) -> Example:
    route = draw(st.sampled_from(all_routes))
    names = field_names(route.message)
    body = draw(bodies(names))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    chunks = tuple(body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True))
    length = draw(st.sampled_from([str(len(body)), None, str(MAX_BODY + 1), "0", "-1", "1e9", "abc",
                                   str(10 ** 30)]))
    text = st.text(max_size=12)
    params = {p: draw(text) for p in route.params}
    query = tuple(draw(st.lists(st.tuples(st.sampled_from(names) | st.sampled_from(["inner.note", "payload.i32",
                                                                                      "payload", "a.b.c", ""]), text),
                                max_size=4)))
    return Example(route, draw(CONTENT_TYPES), length, chunks, params, query)


# ---------------------------------------------------------------------- the bridge's request path
_GATEWAY = SimpleNamespace(config=SimpleNamespace(bridge=SimpleNamespace(max_body=MAX_BODY)))


def request_of(ex: Example) -> Request:
    headers = [(b"host", b"bridge.test")]
    if ex.content_type is not None:
        headers.append((b"content-type", ex.content_type.encode("utf-8", "surrogateescape")))
    if ex.content_length is not None:
        headers.append((b"content-length", ex.content_length.encode()))
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in ex.chunks] + \
        [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": headers, "http_version": "1.1", "scheme": "https", "server": ("bridge.test", 443)}
    return Request(scope, receive)


async def transcode(ex: Example) -> Message:
    """What ``Gateway._handle`` does with a request before calling the agent."""
    rule = ex.route.rule
    if rule is not None and not rule.body:
        body: Any = EMPTY
    else:
        body = parse_json(await Gateway.read_json(_GATEWAY, request_of(ex)))  # type: ignore[arg-type]
    return build_request(ex.route.message(), rule, body, ex.params, ex.query)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def answer(loop: asyncio.AbstractEventLoop, ex: Example) -> Message | HttpError:
    with time_limit(SECONDS):
        try:
            return loop.run_until_complete(transcode(ex))
        except HttpError as e:
            assert e.status in ALLOWED, f"{e.status} {e.message}"
            return e


@pytest.mark.parametrize("profile", PROFILES)
def test_any_request_is_a_message_or_400_413_415(loop: asyncio.AbstractEventLoop, profile: settings) -> None:
    def check(ex: Example) -> None:
        answer(loop, ex)

    run(profile, examples(routes()), check)


@pytest.mark.parametrize("profile", PROFILES)
def test_an_accepted_body_encodes_back_to_the_same_message(loop: asyncio.AbstractEventLoop,
                                                           profile: settings) -> None:
    """Whatever the default route accepts, its canonical JSON is accepted again as the same message."""
    route = routes()[0]

    def check(doc: Any) -> None:
        raw = json.dumps(doc).encode()
        ex = Example(route, "application/json", None, (raw,), {}, ())
        got = answer(loop, ex)
        if isinstance(got, HttpError):
            return
        again = answer(loop, Example(route, "application/json", None, (to_json(got),), {}, ()))
        assert not isinstance(again, HttpError), f"{to_json(got)!r} refused: {again.message}"
        assert again == got

    keys = st.sampled_from(field_names(route.message)) | st.text(max_size=6)
    run(profile, st.dictionaries(keys, shaped_json(field_names(route.message)), max_size=3), check)


@pytest.mark.parametrize("profile", PROFILES)
def test_depth_check_agrees_with_the_json_parser(profile: settings) -> None:
    """``check_depth`` never raises anything but 400, and refuses exactly the bodies nested too deep."""
    def depth(value: Any) -> int:
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        if isinstance(value, dict):
            return 1 + max((depth(v) for v in value.values()), default=0)
        return 0

    def check(doc: Any) -> None:
        raw = json.dumps(doc).encode()
        with time_limit(SECONDS):
            try:
                check_depth(raw)
            except HttpError as e:
                assert e.status == 400 and depth(doc) > MAX_DEPTH
            else:
                assert depth(doc) <= MAX_DEPTH

    strings = st.text(alphabet=st.sampled_from('[]{}"\\ab'), max_size=20)
    deep = st.integers(0, 80).flatmap(lambda n: st.builds(
        lambda leaf, wrap: [leaf] if n == 0 else _wrap(leaf, n, wrap), strings, st.lists(st.booleans(), min_size=n,
                                                                                        max_size=n)))
    run(profile, deep | st.recursive(strings, lambda kids: st.lists(kids, max_size=3)
                                     | st.dictionaries(strings, kids, max_size=3), max_leaves=12), check)


def _wrap(leaf: Any, n: int, as_object: list[bool]) -> Any:
    value = leaf
    for obj in as_object[:n]:
        value = {"[{": value} if obj else [value]
    return value
