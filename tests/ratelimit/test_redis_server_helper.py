"""tests/redis_server.py: a missing binary skips locally and fails under CI=true."""

from __future__ import annotations

import os
import shutil

import pytest
import redis_server


@pytest.fixture
def no_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(os, "access", lambda _path, _mode: False)


@pytest.mark.usefixtures("no_binary")
def test_missing_binary_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        redis_server.redis_server_binary()


@pytest.mark.usefixtures("no_binary")
def test_missing_binary_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        redis_server.redis_server_binary()
