"""Revocation by jti: the append-only file beside the CA and the live set."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from agentmesh.clock import FakeClock
from agentmesh.errors import ConfigError, PKIError
from agentmesh.tokens import REVOKED_FILE, RevocationStore, RevokedSet


def test_revoke_and_load(tmp_path: Path, clock: FakeClock) -> None:
    store = RevocationStore(tmp_path, clock=clock)
    assert store.load() == frozenset()
    store.revoke("a", clock() + 60)
    store.revoke("b", None)
    store.revoke("old", clock() - 7200)
    assert store.load() == {"a", "b"}
    lines = (tmp_path / REVOKED_FILE).read_text().splitlines()
    assert [json.loads(line)["jti"] for line in lines] == ["a", "b", "old"]
    assert stat.S_IMODE((tmp_path / REVOKED_FILE).stat().st_mode) == 0o600
    clock.advance(60 + 3600 + 1)
    assert store.load() == {"b"}


def test_an_existing_world_readable_file_is_tightened(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / REVOKED_FILE).write_text("")
    (tmp_path / REVOKED_FILE).chmod(0o644)
    RevocationStore(tmp_path, clock=clock).revoke("a", None)
    assert stat.S_IMODE((tmp_path / REVOKED_FILE).stat().st_mode) == 0o600


def test_damaged_file_fails_closed(tmp_path: Path) -> None:
    (tmp_path / REVOKED_FILE).write_text('{"jti": "a", "exp": null}\nnot json\n')
    with pytest.raises(PKIError, match="line 2"):
        RevocationStore(tmp_path).load()


def test_bad_jti_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        RevocationStore(tmp_path).revoke("", 1.0)


def test_revoked_set_is_a_thread_safe_callable() -> None:
    s = RevokedSet(["x"])
    assert s("x") and not s("y")
    s.update(["y", "z"])
    assert not s("x") and s("y") and len(s) == 2
    s.add("w")
    assert "w" in s

    def writer() -> None:
        for i in range(500):
            s.add(f"j{i}")

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s(f"j{i}") for i in range(500))
