"""Every operator error is one line ``agentmesh: error: ...`` with exit code 2 and no traceback, naming
what to fix (the busy address, the app module and its exception, the missing file, the unreachable
control plane); ``--debug`` (or AGENTMESH_DEBUG=1) adds the traceback. Real processes, real sockets."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from meshkit import free_port, write_mesh

from agentmesh.cli import errors as cli_errors
from agentmesh.cli.main import main, version
from agentmesh.errors import ConfigError, Unavailable

AGENTMESH = [sys.executable, "-m", "agentmesh.cli.main"]
OK_APP = """
from agentmesh.v1 import agent_pb2_grpc

class Agent(agent_pb2_grpc.AgentServicer):
    def __init__(self, node):
        self.node = node
"""


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTMESH, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, **(env or {})})


def one_line(r: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The error line of a failed command: exit 2, nothing on stderr but that line."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentmesh: error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    """A mesh (CA, identities, config) with one agent, alpha, whose app is importable from tmp_path."""
    (tmp_path / "okapp.py").write_text(OK_APP)
    return write_mesh(tmp_path, {"alpha": {"roles": ["alpha"], "app": "okapp:Agent"}})


def edit(path: Path, **changes: object) -> Path:
    doc = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process (here: this one) is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# ----------------------------------------------------------------------------- busy ports


def test_busy_port_of_an_agent(mesh_file: Path, held_port: int) -> None:
    edit(mesh_file, agents__alpha__address=f"127.0.0.1:{held_port}")
    line = one_line(run("agent", "alpha", "--config", str(mesh_file), cwd=mesh_file.parent),
                    f"agent alpha: cannot listen on 127.0.0.1:{held_port}: address already in use")
    assert "E1" not in line  # grpc's own bind log line never appears: the port is checked first


def test_busy_port_of_the_control_plane(mesh_file: Path, held_port: int) -> None:
    edit(mesh_file, control__address=f"127.0.0.1:{held_port}")
    one_line(run("control", "--config", str(mesh_file)),
             f"the control plane: cannot listen on 127.0.0.1:{held_port}: address already in use")


def test_busy_port_of_the_bridge(mesh_file: Path, held_port: int) -> None:
    one_line(run("bridge", "--config", str(mesh_file), "--listen", f"127.0.0.1:{held_port}"),
             f"the bridge: cannot listen on 127.0.0.1:{held_port}: address already in use")


def test_an_address_of_another_host(mesh_file: Path) -> None:
    edit(mesh_file, agents__alpha__address="192.0.2.1:7101")  # TEST-NET-1: never an address of this host
    one_line(run("agent", "alpha", "--config", str(mesh_file), cwd=mesh_file.parent),
             "cannot listen on 192.0.2.1:7101: not an address of this host")


def test_check_listen_accepts_a_free_port_and_port_zero() -> None:
    cli_errors.check_listen(f"127.0.0.1:{free_port()}", "x")
    cli_errors.check_listen("127.0.0.1:0", "x")
    with pytest.raises(Unavailable, match="unknown host"):
        cli_errors.check_listen("no-such-host.invalid:7000", "x")


# ----------------------------------------------------------------------------- apps that fail to import


@pytest.mark.parametrize(("source", "last_line", "line"), [
    ("raise RuntimeError('missing OPENAI_API_KEY')\n", "RuntimeError: missing OPENAI_API_KEY", 1),
    ("import os\nKEY = os.environ['AGENTMESH_TEST_UNSET_VARIABLE']\n", "KeyError: 'AGENTMESH_TEST_UNSET_VARIABLE'", 2),
    ("def broken(:\n    pass\n", "SyntaxError: invalid syntax", 1),
])
def test_app_that_raises_at_import(mesh_file: Path, source: str, last_line: str, line: int) -> None:
    (mesh_file.parent / "brokenapp.py").write_text(source)
    edit(mesh_file, agents__alpha__app="brokenapp:Agent")
    r = run("agent", "alpha", "--config", str(mesh_file), cwd=mesh_file.parent)
    one_line(r, "app 'brokenapp:Agent': importing brokenapp failed at ", f"brokenapp.py:{line}: {last_line}")


def test_app_whose_dependency_is_missing(mesh_file: Path) -> None:
    (mesh_file.parent / "brokenapp.py").write_text("import agentmesh_no_such_dependency\n")
    edit(mesh_file, agents__alpha__app="brokenapp:Agent")
    one_line(run("agent", "alpha", "--config", str(mesh_file), cwd=mesh_file.parent),
             "cannot import module 'agentmesh_no_such_dependency'")


@pytest.mark.slow  # ~4 s of CLI subprocesses: CI runs it
def test_debug_shows_the_traceback(mesh_file: Path) -> None:
    (mesh_file.parent / "brokenapp.py").write_text("raise RuntimeError('missing OPENAI_API_KEY')\n")
    edit(mesh_file, agents__alpha__app="brokenapp:Agent")
    for r in (run("--debug", "agent", "alpha", "--config", str(mesh_file), cwd=mesh_file.parent),
              run("agent", "alpha", "--config", str(mesh_file), "--debug", cwd=mesh_file.parent),
              run("agent", "alpha", "--config", str(mesh_file), cwd=mesh_file.parent, env={"AGENTMESH_DEBUG": "1"})):
        assert r.returncode == 2
        assert "Traceback (most recent call last)" in r.stderr
        assert 'brokenapp.py", line 1' in r.stderr  # the app's own frame
        assert r.stderr.strip().splitlines()[-1].startswith("agentmesh: error: app 'brokenapp:Agent'")


# ----------------------------------------------------------------------------- missing files, unreachable peers


def test_missing_files_name_their_path(tmp_path: Path, mesh_file: Path) -> None:
    ca = str(mesh_file.parent / "ca")
    missing = tmp_path / "nowhere" / "cert.pem"
    one_line(run("token", "issue", "--ca", ca, "--sub", "a", "--role", "r", "--cert", str(missing)),
             f"--cert: cannot read {missing}: No such file or directory")
    one_line(run("audit", "show", str(tmp_path / "audit-missing.jsonl")), f"audit log not found: {tmp_path}")
    one_line(run("policy", "check", "--config", str(tmp_path / "missing.yaml"), "--from", "a", "--to", "b",
                 "--method", "/x.Y/Z"), "config file not found")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # an OSError from deep inside (writing the identity under a regular file) still names the path
    one_line(run("cert", "issue", "alpha", "--ca", ca, "--out", str(blocker / "alpha")), str(blocker))


def test_missing_bridge_identity_names_the_file(mesh_file: Path) -> None:
    identity = mesh_file.parent / "identities" / "bridge"
    (identity / "key.pem").unlink()
    one_line(run("bridge", "--config", str(mesh_file), "--listen", f"127.0.0.1:{free_port()}"),
             str(identity / "key.pem"))


def test_unreachable_control_plane(mesh_file: Path) -> None:
    edit(mesh_file, control__address=f"127.0.0.1:{free_port()}", control__connect_timeout="1s")
    one_line(run("agent", "alpha", "--config", str(mesh_file), cwd=mesh_file.parent),
             "alpha: no trust data from the control plane at 127.0.0.1:")


# ----------------------------------------------------------------------------- the one place: describe()


def test_describe_and_exit_codes() -> None:
    assert cli_errors.describe(ConfigError("bad key")) == "bad key"
    noted = ConfigError("PERMISSION_DENIED: no rule allows it")
    noted.add_note("trace 4bf92f3577b34da6a3ce929d0e0e4736")
    assert cli_errors.describe(noted) == "PERMISSION_DENIED: no rule allows it (trace 4bf92f3577b34da6a3ce929d0e0e4736)"
    missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/etc/agentmesh/mesh.yaml")
    assert cli_errors.describe(missing) == "/etc/agentmesh/mesh.yaml: No such file or directory"
    moved = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a", None, "/b")
    assert cli_errors.describe(moved) == "/a -> /b: Invalid cross-device link"
    assert cli_errors.describe(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) == \
        "Connection refused"
    assert cli_errors.describe(ssl.SSLError(1, "[SSL] PEM lib")).startswith("TLS: ")
    assert cli_errors.describe(ValueError("oops")) == "unexpected ValueError: oops (run with --debug for the traceback)"
    assert [cli_errors.exit_code(e) for e in (ConfigError("x"), missing, ValueError(), KeyboardInterrupt())] == \
        [2, 2, 1, 130]


def test_an_unexpected_error_is_one_line_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    def bug(args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("agentmesh.cli.ca._init", bug)
    assert main(["ca", "init", "--dir", str(tmp_path / "ca"), "--trust-domain", "example.org"]) == 1
    err = capsys.readouterr().err
    assert err == "agentmesh: error: unexpected ZeroDivisionError: division by zero (run with --debug for the " \
                  "traceback)\n"
    assert main(["--debug", "ca", "init", "--dir", str(tmp_path / "ca"), "--trust-domain", "example.org"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "in bug" in err


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout == f"agentmesh {version()}\n"
    from importlib.metadata import version as dist_version

    assert version() == dist_version("agentmesh")
