"""Generated code comes only from `make proto`: regenerating must reproduce the committed files."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from agentmesh.protogen import generate

REPO = Path(__file__).resolve().parents[1]


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency (make install)")
    generate(REPO / "protos", tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "protoc produced nothing"
    stale = [str(p) for p in fresh if not (REPO / p).exists() or not filecmp.cmp(tmp_path / p, REPO / p, shallow=False)]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"
    committed = {p.relative_to(REPO) for p in (REPO / "agentmesh" / "v1").glob("*_pb2*")}
    assert committed == set(fresh), "generated files without a .proto (or the reverse); run `make proto`"
