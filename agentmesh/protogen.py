"""Generates the Python modules (and .pyi stubs) for every .proto under a directory.

Used by ``make proto`` and by the staleness test; generated files are never edited by hand.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def generate(proto_root: Path, out_dir: Path) -> list[Path]:
    """Runs protoc (from grpcio-tools) with the mypy-protobuf plugins; returns the .proto files compiled."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    protos = sorted(proto_root.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    bindir = Path(sys.executable).parent
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={shutil.which('protoc-gen-mypy', path=str(bindir))}",
        f"--plugin=protoc-gen-mypy_grpc={shutil.which('protoc-gen-mypy_grpc', path=str(bindir))}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *(str(p.relative_to(proto_root)) for p in protos),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return protos


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "protos")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else ".")
    for p in generate(root, out):
        print(f"generated {p}")


if __name__ == "__main__":
    main()
