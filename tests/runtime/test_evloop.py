"""The event loop a member runs on (agentmesh.runtime.evloop): the decision as a table, the loop it gives,
and the one line an operator gets for a bad AGENTMESH_LOOP from the real CLI, before anything is done."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.errors import ConfigError
from agentmesh.runtime import evloop

try:
    import uvloop
except ImportError:  # a dev install has it; CI must run these tests
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("uvloop is not installed (pip install 'agentmesh[fast]')", allow_module_level=True)


def _importable() -> evloop.LoopFactory | None:
    return uvloop.new_event_loop


def _broken() -> evloop.LoopFactory | None:  # not installed, or its import fails
    return None


@pytest.mark.parametrize(("choice", "found", "expected"), [
    ("auto", _importable, "uvloop"),
    ("auto", _broken, "asyncio"),
    ("uvloop", _importable, "uvloop"),
    ("asyncio", _importable, "asyncio"),
    ("asyncio", _broken, "asyncio"),
])
def test_the_loop_chosen(choice, found, expected):
    factory = evloop.loop_factory(choice, uvloop=found)
    assert (factory is uvloop.new_event_loop) if expected == "uvloop" else factory is None


@pytest.mark.parametrize(("choice", "found", "message"), [
    ("uvloop", _broken, "AGENTMESH_LOOP=uvloop: uvloop is not installed or cannot be imported"),
    ("tokio", _importable, "AGENTMESH_LOOP='tokio': expected one of auto, uvloop, asyncio"),
    ("", _importable, "AGENTMESH_LOOP='': expected one of auto, uvloop, asyncio"),
    ("UVLOOP", _importable, "AGENTMESH_LOOP='UVLOOP': expected one of auto, uvloop, asyncio"),
])
def test_a_bad_choice_is_one_clear_error(choice, found, message):
    with pytest.raises(ConfigError) as e:
        evloop.loop_factory(choice, uvloop=found)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_a_uvloop_that_fails_to_import_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what a broken install's ImportError looks like
    assert evloop.loop_factory("auto") is None
    with pytest.raises(ConfigError, match="cannot be imported"):
        evloop.loop_factory("uvloop")


def test_choose_reads_the_environment():
    assert evloop.choose({}) is uvloop.new_event_loop  # auto
    assert evloop.choose({"AGENTMESH_LOOP": "asyncio"}) is None
    with pytest.raises(ConfigError):
        evloop.choose({"AGENTMESH_LOOP": "bogus"})


@pytest.mark.parametrize(("factory", "loop_type"), [(uvloop.new_event_loop, "Loop"), (None, "_UnixSelectorEventLoop")])
def test_run_runs_the_coroutine_on_that_loop(factory, loop_type):
    async def which() -> str:
        return type(asyncio.get_running_loop()).__name__

    assert evloop.run(which(), factory) == loop_type


def test_a_loop_that_cannot_start_leaves_no_coroutine_behind():
    def no_loop() -> asyncio.AbstractEventLoop:
        raise OSError("no loop")

    async def main() -> None:
        raise AssertionError("never runs")

    coro = main()
    with pytest.raises(OSError):
        evloop.run(coro, no_loop)
    assert coro.cr_frame is None  # closed: no "coroutine was never awaited" warning


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "mesh.yaml"
    cfg.write_text("trust_domain: example.org\ncontrol:\n  address: 127.0.0.1:9\n  join_address: 127.0.0.1:9\n"
                   "agents:\n  echo:\n    address: 127.0.0.1:0\n")
    env = {**os.environ, "AGENTMESH_LOOP": "bogus"}
    return subprocess.run([sys.executable, "-m", "agentmesh.cli.main", *args, "--config", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("command", [["control"], ["agent", "echo"], ["agent", "echo", "--join", "am1.x.y"]])
def test_the_cli_says_a_bad_loop_in_one_line_before_it_does_anything(tmp_path, command):
    # the real CLI in a real process; with --join, the loop is refused before the join (whose control plane
    # here is unreachable: had it been tried first, its error would be the line, and a real token used up)
    r = _cli(tmp_path, *command)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "AGENTMESH_LOOP='bogus'" in lines[0], r.stderr
    assert "joined" not in r.stdout
