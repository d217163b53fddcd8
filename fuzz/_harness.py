"""What the fuzz targets share: seed corpus on disk, libFuzzer arguments, and a replay without atheris.

Each target module defines ``make_target() -> Callable[[bytes], None]`` (doing its ``agentmesh`` imports
inside, so atheris instruments them) and ``seeds() -> list[bytes]``; :func:`main` runs it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("FUZZ_WORK", ROOT / ".mesh" / "fuzz"))  # .mesh/ is git-ignored


def seed_corpus(name: str, seeds: list[bytes]) -> Path:
    corpus = WORK / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # noqa: S324 (a file name)
    return corpus


def replay(make_target: Callable[[], Callable[[bytes], None]], seeds: list[bytes]) -> None:
    """Runs every seed through the target once (no atheris needed): the targets stay runnable."""
    one_input = make_target()
    for seed in seeds:
        one_input(seed)


def main(name: str, make_target: Callable[[], Callable[[bytes], None]], seeds: Callable[[], list[bytes]]) -> None:
    """``python fuzz/fuzz_NAME.py [libFuzzer flags]``; ``--replay`` runs the seeds once without atheris."""
    if "--replay" in sys.argv[1:]:
        replay(make_target, seeds())
        print(f"{name}: {len(seeds())} seeds replayed, no failure")
        return
    import atheris  # type: ignore[import-not-found]

    with atheris.instrument_imports(include=["agentmesh"]):
        one_input = make_target()
    corpus = seed_corpus(name, seeds())
    artifacts = WORK / "artifacts" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [sys.argv[0], f"-artifact_prefix={artifacts}/", "-timeout=5", "-rss_limit_mb=2048", *sys.argv[1:],
            str(corpus)]
    atheris.Setup(args, one_input)
    atheris.Fuzz()
