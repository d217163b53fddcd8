"""Issue 13 item 5: files with secrets or audit records that already exist with mode 0644 are made 0600
when opened for writing (not only when created): the audit log, the CA's index, join tokens, revoked tokens."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from support import new_ca

from agentmesh.audit.exporters import JsonlExporter
from agentmesh.pki import CertificateAuthority, JoinTokens
from agentmesh.tokens.revocation import RevocationStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _audit(tmp: Path, ca: CertificateAuthority) -> Path:
    path = tmp / "audit.jsonl"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    JsonlExporter(path).shutdown()
    return path


def _index(tmp: Path, ca: CertificateAuthority) -> Path:
    path = ca.dir / "index.jsonl"
    os.chmod(path, 0o644)
    ca.issue("a")
    return path


def _join_tokens(tmp: Path, ca: CertificateAuthority) -> Path:
    tokens = JoinTokens(ca.dir)
    tokens.create("a", ttl=600, blocked={})
    os.chmod(tokens.path, 0o644)
    tokens.create("b", ttl=600, blocked={})
    return Path(tokens.path)


def _revoked_tokens(tmp: Path, ca: CertificateAuthority) -> Path:
    store = RevocationStore(ca.dir)
    store.revoke("jti-1", None)
    os.chmod(store.path, 0o644)
    store.revoke("jti-2", None)
    return store.path


FILES: dict[str, Callable[[Path, CertificateAuthority], Path]] = {
    "audit.jsonl": _audit,
    "index.jsonl": _index,
    "join-tokens.jsonl": _join_tokens,
    "revoked-tokens.jsonl": _revoked_tokens,
}


@pytest.mark.parametrize("name", FILES)
def test_an_existing_world_readable_file_is_made_private(tmp_path: Path, name: str) -> None:
    path = FILES[name](tmp_path, new_ca(tmp_path))
    assert _mode(path) == 0o600


def test_audit_log_created_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "audit.jsonl"
    JsonlExporter(path).shutdown()
    assert _mode(path) == 0o600


def test_audit_log_to_a_device_is_left_alone(tmp_path: Path) -> None:
    before = _mode(Path("/dev/null"))
    JsonlExporter(Path("/dev/null")).shutdown()
    assert _mode(Path("/dev/null")) == before
