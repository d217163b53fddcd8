"""A hostile metrics endpoint (``agentmesh top`` / ``graph --endpoint`` read any endpoint they are given)
cannot write to the operator's terminal: label values (source, destination, member) and the reason an
endpoint gives for failing are printed with control and bidi characters escaped, by the one function
``audit show`` uses too. A real HTTP endpoint; the same page with plain names prints them as they are."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from agentmesh.audit import tree
from agentmesh.cli import status
from agentmesh.cli.main import main
from agentmesh.cli.text import printable

EVIL = "\x1b[2J\x1b]0;pwned\x07fake\rrow\u202e"
CONTROL = ("\x1b", "\x07", "\r", "\u202e")


def page(source: str, destination: str, member: str) -> str:
    return (
        "# TYPE agentmesh_server_requests_total counter\n"
        f'agentmesh_server_requests_total{{destination="{destination}",source="{source}",principal_class="none",'
        'grpc_service="s",grpc_method="m",grpc_code="OK",decision="allow"} 3\n'
        "# TYPE agentmesh_member_start_time_seconds gauge\n"
        f'agentmesh_member_start_time_seconds{{member="{member}"}} 1\n'
    )


class Endpoint(http.server.BaseHTTPRequestHandler):
    """Serves ``server.text`` as its metrics, or fails with ``server.reason`` as its reason phrase."""

    def do_GET(self) -> None:
        reason = getattr(self.server, "reason", None)
        if reason is not None:
            self.send_response(500, reason)
            self.end_headers()
            return
        body = self.server.text.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    started: list[http.server.ThreadingHTTPServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def endpoint(started: list[http.server.ThreadingHTTPServer], text: str = "", reason: str | None = None) -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    server.text, server.reason = text, reason  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started.append(server)
    return f"127.0.0.1:{server.server_address[1]}"


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("name", [EVIL, "alpha"], ids=["hostile", "plain"])
async def test_top_escapes_what_an_endpoint_names(capsys: pytest.CaptureFixture[str],
                                                  serve: list[http.server.ThreadingHTTPServer], name: str) -> None:
    at = endpoint(serve, page(name, name, name))
    out, _ = await run(capsys, "top", "--endpoint", at, "--once")
    assert not [c for c in CONTROL if c in out], out.encode()
    assert printable(name) in out.splitlines()[1]  # the row: shown, escaped (a plain name as it is)
    assert f"members: {printable(name)}" in out
    if name == "alpha":
        assert out.splitlines()[1].split()[:2] == ["alpha", "alpha"]
    else:
        assert "\\u001b[2J\\u001b]0;pwned\\u0007fake\\u000drow\\u202e" in out


async def test_an_endpoint_s_reason_for_failing_is_escaped(capsys: pytest.CaptureFixture[str],
                                                           serve: list[http.server.ThreadingHTTPServer]) -> None:
    at = endpoint(serve, reason="Gone\x1b]0;pwned\x07")
    out, _ = await run(capsys, "top", "--endpoint", at, "--once")
    _, err = await run(capsys, "graph", "--endpoint", at)
    for text in (out, err):
        assert "unreachable:" in text and "Gone\\u001b]0;pwned\\u0007" in text
        assert not [c for c in CONTROL if c in text], text.encode()


@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
async def test_graph_keeps_only_safe_characters_of_names(capsys: pytest.CaptureFixture[str],
                                                         serve: list[http.server.ThreadingHTTPServer],
                                                         fmt: str) -> None:
    out, _ = await run(capsys, "graph", "--endpoint", endpoint(serve, page(EVIL, "beta", "alpha")), "-o", fmt)
    assert not [c for c in CONTROL if c in out], out.encode()
    assert "beta" in out and "alpha" in out


def test_status_escapes_what_members_logs_and_endpoints_say() -> None:
    now = datetime.now(UTC)
    member = status.MemberStatus("alpha", "agent", "127.0.0.1:1", health=f"unready ({EVIL})",
                                 last_errors=[f"ERROR refused /{EVIL}/Invoke"], last_exit=EVIL)
    plain = status.MemberStatus("beta", "agent", "127.0.0.1:2", health="SERVING", last_errors=["ERROR lost it"])
    report = status.MeshStatus(config="mesh.yaml", trust_domain="example.org", run="r1", up_pid=1, up_running=False,
                               state=EVIL, logs="/logs", checked_at=now, members=[member, plain])
    text = "\n".join(status._lines(report))
    assert not [c for c in CONTROL if c in text], text.encode()
    assert f"unready ({printable(EVIL)})" in text
    assert "SERVING" in text and "ERROR lost it" in text


def test_one_escaping_function() -> None:
    assert tree._printable is printable  # audit show / tail
    assert printable("a\x1bb\u2066c\x85") == "a\\u001bb\\u2066c\\u0085" and printable("plain é") == "plain é"
