"""Coverage-guided fuzzing of the bridge's JSON depth check and body parsing (``agentmesh.bridge``).

For any request body: ``check_depth`` and ``parse_json`` raise nothing but a 400 :class:`HttpError`;
``check_depth`` refuses a body that is JSON exactly when it nests deeper than ``MAX_DEPTH`` (checked
against the parsed value); ``build_request`` into the mesh's ``Task`` message answers a message or a
400. Any other exception, or a disagreement, is a crash.

    make fuzz
    .venv/bin/python fuzz/fuzz_json_depth.py -max_total_time=60
    .venv/bin/python fuzz/fuzz_json_depth.py --replay      # the seeds once, without atheris
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import main


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, list | dict):
            d += 1
            deepest = max(deepest, d)
            stack.extend((c, d) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def make_target() -> Callable[[bytes], None]:
    from agentmesh.bridge.checks import MAX_DEPTH, check_depth
    from agentmesh.bridge.errors import HttpError
    from agentmesh.bridge.transcode import build_request, parse_json
    from agentmesh.v1 import agent_pb2

    def one_input(data: bytes) -> None:
        try:
            check_depth(data)
            refused = False
        except HttpError as e:
            assert e.status == 400, e.status
            refused = True
        try:
            doc = json.loads(data.decode("utf-8"))  # the bridge takes UTF-8 only
        except (ValueError, RecursionError):  # not JSON (or too deep for the reference parser)
            pass
        else:
            assert refused == (_depth(doc) > MAX_DEPTH), (refused, _depth(doc))
        try:
            body = parse_json(data)
        except HttpError as e:
            assert e.status == 400, e.status
            return
        try:
            build_request(agent_pb2.Task(), None, body, {})
        except HttpError as e:
            assert e.status == 400, e.status

    return one_input


def seeds() -> list[bytes]:
    task = {"id": "t1", "input": [{"text": "hello", "mimeType": "text/plain"}], "metadata": {"k": "v"},
            "skill": "summarize"}
    return [b"", b"{}", b"[]", b"null", json.dumps(task).encode(), b"[" * 64 + b"]" * 64, b"[" * 65 + b"]" * 65,
            b'{"a":' * 65 + b"1" + b"}" * 65, b'["[[[[", "\\"[[["]', b'{"id": "x", "id": "y"}', b"\xff\xfe",
            b'{"input": [{"text": 1}]}', b'"\\ud800"', b"1e400", b"NaN"]


if __name__ == "__main__":
    main("json_depth", make_target, seeds)
