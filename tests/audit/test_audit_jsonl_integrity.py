"""The JSONL log keeps its records whole on a real disk: a write cut short by a real file size limit
(RLIMIT_FSIZE, in a child process) costs only the records it cut, never the next one, and readers skip the
torn line saying where; and the writer never writes through a symbolic link swapped in at its path."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind

from agentmesh.audit import build_audit
from agentmesh.audit.exporters import JsonlExporter
from agentmesh.audit.jsonlfile import RotatingFile
from agentmesh.cli.audit import cmd_show, cmd_tail
from agentmesh.config import AuditConfig
from agentmesh.errors import ConfigError

ROOT = str(Path(__file__).resolve().parents[2])

#: exports span 1, then spans 2 and 3 in one batch, then span 4; with "limit", the file may only grow by
#: two and a half lines after span 1 (line 2 fits, line 3 only in part), and has room again for span 4
CHILD = textwrap.dedent(r"""
    import json, os, resource, signal, sys
    from pathlib import Path
    from opentelemetry.trace import SpanKind
    from agentmesh.audit.exporters import JsonlExporter
    from agentmesh.audit.fastspan import FastTracer

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (EFBIG rather than the signal's death)
    path, limit = Path(sys.argv[1]), sys.argv[2] == "limit"
    ended = []
    tracer = FastTracer("ingestor", on_end=ended.append)
    exporter = JsonlExporter(path)
    outcomes = []

    def export(*ns):
        ended.clear()
        for n in ns:
            tracer.start_span(f"call-{n}", kind=SpanKind.SERVER, attributes={"pad": "x" * 300}).end()
        result = exporter.export(list(ended))
        outcomes.append([result.name, exporter.landed, exporter.error])

    export(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit:
        line = os.path.getsize(path)
        resource.setrlimit(resource.RLIMIT_FSIZE, (line * 2 + line // 2, hard))  # the disk fills up
    export(2, 3)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
    export(4)
    exporter.shutdown()
    print(json.dumps(outcomes))
""")


def _run_child(path: Path, mode: str) -> list[list[object]]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], check=True, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    outcomes: list[list[object]] = json.loads(done.stdout)
    return outcomes


def _show(path: Path) -> tuple[list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    assert cmd_show(argparse.Namespace(file=path, trace=None, all=False, output="json"), out=out, err=err) == 0
    names = sorted(s["name"] for trace in json.loads(out.getvalue()) for s in trace["spans"])
    return names, err.getvalue()


@pytest.mark.parametrize("mode", ["room", "limit"])
def test_a_write_cut_short_by_a_full_disk_costs_only_the_records_it_cut(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "audit.jsonl"
    outcomes = _run_child(path, mode)
    names, warnings = _show(path)
    if mode == "room":
        assert outcomes == [["SUCCESS", 1, None], ["SUCCESS", 2, None], ["SUCCESS", 1, None]]
        assert names == ["call-1", "call-2", "call-3", "call-4"] and warnings == ""
        return
    # the batch failed (counted), but span 2's line landed whole: only span 3 is lost
    assert outcomes == [["SUCCESS", 1, None], ["FAILURE", 1, "EFBIG"], ["SUCCESS", 1, None]]
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 5 and lines[-1] == b"" and json.loads(lines[3])["name"] == "call-4"  # on a line of its own
    assert names == ["call-1", "call-2", "call-4"]  # the record written once the disk had room again is whole
    assert warnings == f"agentmesh: warning: {path}:3: not valid JSON (skipped)\n"  # (its number, not its text)
    out, err = io.StringIO(), io.StringIO()
    assert cmd_tail(argparse.Namespace(file=path, lines=10, follow=False, output="table"), out=out, err=err) == 0
    assert len(out.getvalue().splitlines()) == 3 and err.getvalue() == warnings


def test_a_log_left_torn_by_a_process_that_died_gets_its_next_record_on_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"n": 1, "start": 1.7e9}\n{"n": 2, "sta')  # a writer died mid-write
    f = RotatingFile(path)
    f.write(b'{"n": 3}\n')
    f.write(b'{"n": 4}\n')
    f.close()
    assert path.read_bytes().split(b"\n")[1:] == [b'{"n": 2, "sta', b'{"n": 3}', b'{"n": 4}', b""]
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(b'{"n": 1, "start": 1.7e9}\n')
    f = RotatingFile(whole)
    f.write(b'{"n": 2}\n')  # a file that ends with a newline gets no empty line
    f.close()
    assert whole.read_bytes() == b'{"n": 1, "start": 1.7e9}\n{"n": 2}\n'


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    return victim


def _untouched(victim: Path) -> bool:
    return victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_a_symlink_at_the_path_at_start_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    JsonlExporter(logs / "plain.jsonl").shutdown()  # the same directory, a plain path: fine
    (logs / "audit.jsonl").symlink_to(victim)
    with pytest.raises(ConfigError) as e:
        JsonlExporter(logs / "audit.jsonl")
    assert e.value.message == (f"audit.jsonl_path: cannot open {logs / 'audit.jsonl'} for appending (it is a "
                               "symbolic link, and an audit log is never written through one)")
    assert _untouched(victim)


def test_a_symlink_swapped_in_later_fails_the_exporter_and_touches_nothing(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    path = tmp_path / "logs" / "audit.jsonl"
    sink = build_audit(AuditConfig(jsonl_path=path, required=True), service_name="ingestor")

    def end_one(name: str) -> bool:
        sink.tracer.start_span(name, kind=SpanKind.SERVER).end()
        assert sink.force_flush(5)
        return sink.available()

    try:
        assert end_one("first")
        os.rename(path, tmp_path / "logs" / "moved")  # moved away (a rotation by someone else): reopened
        assert end_one("second") and b'"second"' in path.read_bytes()
        os.rename(path, tmp_path / "logs" / "moved-again")
        path.symlink_to(victim)  # someone with write access to the directory
        assert not end_one("third")  # refused: audit.required now fails calls closed
        assert not end_one("fourth")  # and every write while the link is there
        assert _untouched(victim)
        assert sink.stats["exporters"]["jsonl"] == {"dropped": 0, "export_failures": 2, "exported": 2}
        path.unlink()
        assert end_one("fifth") and b'"fifth"' in path.read_bytes() and not path.is_symlink()
    finally:
        sink.shutdown()
    assert _untouched(victim)


def test_the_jsonl_exporter_says_how_long_each_export_held_the_interpreter(tmp_path):
    # the export queue sizes its slices by this (the lines), not by the whole export (the write lets go of it)
    from opentelemetry.trace import SpanKind

    from agentmesh.audit.fastspan import FastTracer

    ended: list = []
    tracer = FastTracer("ingestor", on_end=ended.append)
    exporter = JsonlExporter(tmp_path / "audit.jsonl")
    assert exporter.held is None  # nothing exported yet

    def export(n: int) -> float:
        ended.clear()
        for i in range(n):
            tracer.start_span(f"call-{i}", kind=SpanKind.SERVER, attributes={"i": i, "pad": "x" * 200}).end()
        exporter.export(list(ended))
        assert exporter.held is not None
        return exporter.held

    many = min(export(2000) for _ in range(3))
    one = min(export(1) for _ in range(3))
    assert 0 < one < many  # measured per export, and it grows with the lines built

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    # an export that fails building its lines says it cannot tell (None: the queue then measures the slice
    # whole), never the previous export's figure, which would size the next slices for cheap spans
    ended.clear()
    tracer.start_span("poisoned", kind=SpanKind.SERVER, attributes={"x": Unprintable()}).end()  # type: ignore[dict-item]
    with pytest.raises(RuntimeError):
        exporter.export(list(ended))
    assert exporter.held is None
    exporter.shutdown()
    assert exporter.export([]) is not None and exporter.held is None  # closed: nothing built
    assert (tmp_path / "audit.jsonl").read_text().count("\n") == 3 * 2000 + 3
