"""The event loop a member runs on (agentmesh.runtime.evloop): the decision as a table, the loop it gives,
and the one line an operator gets for a bad AGENTMESH_LOOP, from the real CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from agentmesh.errors import ConfigError
from agentmesh.runtime import evloop

try:
    import uvloop
except ImportError:  # a dev install has it; CI must run these tests
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("uvloop is not installed (pip install 'agentmesh[fast]')", allow_module_level=True)


@pytest.mark.parametrize(("choice", "installed", "expected"), [
    ("auto", True, "uvloop"),
    ("auto", False, "asyncio"),
    ("uvloop", True, "uvloop"),
    ("asyncio", True, "asyncio"),
    ("asyncio", False, "asyncio"),
])
def test_the_loop_chosen(choice, installed, expected):
    factory = evloop.loop_factory(choice, uvloop_installed=installed)
    assert (factory is uvloop.new_event_loop) if expected == "uvloop" else factory is None


@pytest.mark.parametrize(("choice", "installed", "message"), [
    ("uvloop", False, "AGENTMESH_LOOP=uvloop: uvloop is not installed"),
    ("tokio", True, "AGENTMESH_LOOP='tokio': expected one of auto, uvloop, asyncio"),
    ("", True, "AGENTMESH_LOOP='': expected one of auto, uvloop, asyncio"),
])
def test_a_bad_choice_is_one_clear_error(choice, installed, message):
    with pytest.raises(ConfigError) as e:
        evloop.loop_factory(choice, uvloop_installed=installed)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("choice", "loop_type"), [("auto", "Loop"), ("asyncio", "_UnixSelectorEventLoop")])
def test_run_runs_the_coroutine_on_that_loop(choice, loop_type):
    async def which() -> str:
        return type(asyncio.get_running_loop()).__name__

    assert evloop.run(which(), choice=choice) == loop_type


def test_run_reads_the_environment_and_refuses_before_starting(monkeypatch):
    started = []

    async def main() -> None:
        started.append(True)

    monkeypatch.setenv("AGENTMESH_LOOP", "bogus")
    with pytest.raises(ConfigError):
        evloop.run(main())
    assert started == []


def test_the_agent_cli_says_a_bad_loop_in_one_line(tmp_path):
    # the real CLI in a real process: one line on stderr, exit status 2 or 1, no traceback
    cfg = tmp_path / "mesh.yaml"
    cfg.write_text("trust_domain: example.org\nagents:\n  echo:\n    address: 127.0.0.1:0\n")
    env = {**os.environ, "AGENTMESH_LOOP": "bogus"}
    r = subprocess.run([sys.executable, "-m", "agentmesh.cli.main", "control", "--config", str(cfg)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and "AGENTMESH_LOOP='bogus'" in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
