"""The JSONL log rotates by size and by age, and never loses or splits a record: not across rotations, not
with two processes appending to (and rotating) one log at once, not when something else moved the file."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind

from agentmesh.audit import build_audit
from agentmesh.audit.jsonlfile import RotatingFile, log_files
from agentmesh.cli.audit import cmd_show
from agentmesh.config import AuditConfig

ROOT = str(Path(__file__).resolve().parents[2])


def line(n: int, start: float = 1.7e9, width: int = 0) -> bytes:
    return (json.dumps({"n": n, "start": start, "pad": "x" * width}) + "\n").encode()


def numbers(files: list[Path]) -> list[int]:
    return [json.loads(raw)["n"] for f in files for raw in f.read_bytes().splitlines()]


class Clock:
    def __init__(self, now: float = 1.7e9) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_size_rotation_keeps_every_line_whole_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock()
    f = RotatingFile(path, rotate_bytes=1000, clock=clock)
    for n in range(100):
        clock.now += 0.001
        f.write(line(n, width=80))  # ~110 bytes: 9 lines a file
    f.close()
    files = log_files(path)
    assert f.rotations == len(files) - 1 > 10
    assert numbers(files) == list(range(100))
    sizes = [p.stat().st_size for p in files]
    assert all(0 < size <= 1000 for size in sizes)
    for rotated, after in itertools.pairwise(files):  # rotated only when the next line would not fit
        assert rotated.stat().st_size + len(after.read_bytes().splitlines(keepends=True)[0]) > 1000
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert files[-1] == path and files[0].name.startswith("audit.jsonl.")


def test_a_batch_bigger_than_the_limit_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    f = RotatingFile(path, rotate_bytes=100)
    f.write(b"".join(line(n, width=50) for n in range(5)))  # one write, never split
    f.write(line(5))
    f.close()
    files = log_files(path)
    assert [len(p.read_bytes().splitlines()) for p in files] == [5, 1]


def test_age_rotation_counts_from_the_first_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock(1000.0)
    f = RotatingFile(path, rotate_seconds=60, clock=clock)
    clock.now = 5000.0  # an idle hour before the first record: the file's age starts with it
    f.write(line(0, start=5000.0))
    clock.now = 5059.0
    f.write(line(1))
    assert f.rotations == 0
    clock.now = 5060.0
    f.write(line(2))  # 60 s after the first record: rotated before this write
    f.close()
    assert f.rotations == 1
    assert [numbers([p]) for p in log_files(path)] == [[0, 1], [2]]
    assert log_files(path)[0].name == "audit.jsonl.19700101T012420.000000Z"  # named by the rotation's time


def test_a_restarted_writer_rotates_a_log_that_is_already_old(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(line(0, start=1000.0))
    clock = Clock(1030.0)
    f = RotatingFile(path, rotate_seconds=60, clock=clock)
    f.write(line(1))
    assert f.rotations == 0
    clock.now = 1060.0
    f.write(line(2))
    f.close()
    assert f.rotations == 1 and [numbers([p]) for p in log_files(path)] == [[0, 1], [2]]


def test_keep_deletes_only_the_oldest_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock()
    f = RotatingFile(path, rotate_bytes=50, keep=3, clock=clock)
    for n in range(10):
        clock.now += 1
        f.write(line(n))  # each line fills a file
    f.close()
    files = log_files(path)
    assert len(files) == 4 and numbers(files) == [6, 7, 8, 9]


def test_same_second_rotations_get_distinct_names(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    f = RotatingFile(path, rotate_bytes=50, clock=Clock())  # a clock that never moves
    for n in range(4):
        f.write(line(n))
    f.close()
    files = log_files(path)
    assert [p.name[len("audit.jsonl."):] for p in files[:-1]] == [
        "20231114T221320.000000Z", "20231114T221320.000000Z-1", "20231114T221320.000000Z-2"]
    assert numbers(files) == [0, 1, 2, 3]


def test_a_writer_follows_a_rotation_made_by_someone_else(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    f = RotatingFile(path, rotate_bytes=10_000)
    f.write(line(0))
    os.rename(path, tmp_path / "audit.jsonl.20230101T000000.000000Z")  # another process (or logrotate)
    f.write(line(1))  # not into the moved file: into a new one at the path
    assert numbers([path]) == [1]
    path.unlink()  # removed outright
    f.write(line(2))
    f.close()
    assert numbers([path]) == [2] and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f.rotations == 0


def test_a_device_is_never_rotated(tmp_path: Path) -> None:
    f = RotatingFile(Path("/dev/null"), rotate_bytes=1, rotate_seconds=1)
    for n in range(3):
        f.write(line(n))
    f.close()
    assert f.rotations == 0


WRITER = """
import sys
from pathlib import Path
from opentelemetry.trace import SpanKind
from agentmesh.audit import build_audit
from agentmesh.config import AuditConfig

path, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = AuditConfig(jsonl_path=path, jsonl_rotate_bytes=int(sys.argv[4]), jsonl_keep=0)
sink = build_audit(cfg, service_name=name)
for i in range(n):
    sink.tracer.start_span("/agentmesh.v1.Agent/Invoke", kind=SpanKind.SERVER,
                           attributes={"i": i, "filler": name * (i % 97)}).end()
    if i % 5 == 0:
        assert sink.force_flush(10)  # (many small batches: many chances to race a rotation)
assert sink.shutdown(30)
stats = sink.stats["exporters"]["jsonl"]
assert stats == {"dropped": 0, "export_failures": 0, "exported": n}, stats
"""


def test_two_processes_rotating_one_log_lose_and_split_nothing(tmp_path: Path) -> None:
    """Both processes write small batches into a log that rotates every few of them (hundreds of rotations),
    so they often find it due at once. (Without the lock and the second look before renaming, one of them
    renames a path the other just renamed away, and its batch fails: this test fails.)"""
    path, n = tmp_path / "audit.jsonl", 3000
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(n), "3000"],
                              env={**os.environ, "PYTHONPATH": ROOT}) for name in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    files = log_files(path)
    records = [json.loads(raw) for f in files for raw in f.read_bytes().splitlines()]  # every line parses
    assert len(files) > 100  # rotated many times
    assert len(records) == 2 * n
    for name in ("a", "b"):
        assert sorted(r["attributes"]["i"] for r in records if r["service"] == name) == list(range(n))
    assert all(f.read_bytes().endswith(b"\n") for f in files)


def test_audit_show_all_reads_the_rotated_files_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    path = tmp_path / "audit.jsonl"
    sink = build_audit(AuditConfig(jsonl_path=path, jsonl_rotate_bytes=600), service_name="ingestor")
    try:
        for i in range(6):
            sink.tracer.start_span(f"/agentmesh.v1.Agent/Call{i}", kind=SpanKind.SERVER).end()
            assert sink.force_flush(5)
    finally:
        assert sink.shutdown(5)
    assert len(log_files(path)) > 2
    cmd_show(argparse.Namespace(file=path, trace=None, all=False, output="json"))
    current = json.loads(capsys.readouterr().out)
    cmd_show(argparse.Namespace(file=path, trace=None, all=True, output="json"))
    every = json.loads(capsys.readouterr().out)
    assert sum(len(t["spans"]) for t in every) == 6
    assert 0 < sum(len(t["spans"]) for t in current) < 6
