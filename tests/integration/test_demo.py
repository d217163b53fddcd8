"""`make demo` as CI runs it: the workflow through the bridge, every denial, the trace, a clean stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~8 s: make demo is the README's own command, and CI runs this
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "AGENTMESH_DEMO_DIR": str(tmp_path / "demo"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "examples.demo"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=180)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "verdict: pass" in out
    assert "no token                                     -> 401" in out
    assert "a token without the client role              -> 403" in out
    assert "calling the validator from outside           -> 403" in out
    assert "-> 429 Retry-After:" in out
    assert "handshake refused" in out
    assert "kill switch: revoke-agent summarizer         -> 200 before; 503" in out
    assert "alice@example.org -> bridge" in out and "summarizer -> validator" in out
    assert "no process left behind" in out
    assert not _processes_mentioning(str(tmp_path)), "a mesh process outlived the demo"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found
