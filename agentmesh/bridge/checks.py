"""Checks of request JSON that ``json_format`` does not make, so the bridge accepts exactly what its
OpenAPI schemas describe. Pure.

* :func:`check_depth` bounds nesting on the raw bytes, before ``json.loads`` (which recurses);
* :func:`check_request` walks the parsed document along the message descriptor and refuses what
  json_format lets through but the proto3 JSON mapping does not: booleans for enums and
  floating-point fields, enum strings that are not value names (json_format takes ``"1"``), and
  bytes that are not base64 (the base64 decoder skips stray characters), integer strings with
  anything but ASCII digits (``int()`` takes spaces, ``_`` and other scripts). It also maps a float
  written as ``3.4028235e+38`` (how json_format writes FLT_MAX) back to FLT_MAX, which json_format
  would refuse as too large: a response can always be sent back as a request.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import FieldDescriptor

from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.schemas import BASE64_PATTERN, FLOAT_JSON_MAX, INT_PATTERNS

if TYPE_CHECKING:
    from agentmesh.bridge.schemas import FieldDesc, MessageDesc

__all__ = ["MAX_DEPTH", "check_depth", "check_request"]

MAX_DEPTH = 64
FLT_MAX = 3.4028234663852886e38
_SPECIAL = re.compile(rb'["\\\[\]{}]')
_QUOTE, _BACKSLASH, _OPEN_SQUARE, _OPEN_CURLY = b'"'[0], b"\\"[0], b"["[0], b"{"[0]
_BASE64 = re.compile(BASE64_PATTERN)
_INTS = {kind: re.compile(pattern) for kind, pattern in INT_PATTERNS.items()}
_T = FieldDescriptor
_WRAPPED = {"google.protobuf.DoubleValue": _T.TYPE_DOUBLE, "google.protobuf.FloatValue": _T.TYPE_FLOAT,
            "google.protobuf.BytesValue": _T.TYPE_BYTES}


def check_depth(body: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuses JSON nested deeper than ``limit``; brackets inside strings do not count.

    One pass over the bytes that matter (quotes, backslashes, brackets), never a backtracking
    pattern: an unterminated string of escaped quotes costs the same as any other body.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return
    depth = 0
    in_string = False
    escaped_at = -1  # position of the byte a backslash escapes
    for m in _SPECIAL.finditer(body):
        pos = m.start()
        c = body[pos]
        if in_string:
            if pos == escaped_at:
                continue
            if c == _BACKSLASH:
                escaped_at = pos + 1
            elif c == _QUOTE:
                in_string = False
        elif c == _QUOTE:
            in_string = True
        elif c == _OPEN_SQUARE or c == _OPEN_CURLY:
            depth += 1
            if depth > limit:
                raise HttpError.invalid(f"request body is nested deeper than {limit} levels")
        elif c != _BACKSLASH:
            depth -= 1


def check_request(doc: Any, desc: MessageDesc) -> None:
    """Checks (and where noted normalises, in place) the JSON ``doc`` of a ``desc`` message."""
    _message(doc, desc, 0)


def _message(value: Any, desc: MessageDesc, depth: int) -> None:
    if not isinstance(value, dict) or depth > MAX_DEPTH or desc.full_name.startswith("google.protobuf."):
        return  # json_format reports wrong container types; well-known types have their own forms
    for key, v in value.items():
        # json_format's order: the field of that JSON name (the last, if a legacy message has two), else the
        # field of that proto name
        field = _by_json_name(desc).get(key) or desc.fields_by_name.get(key)
        if field is None or v is None:
            continue  # json_format names unknown fields; null means unset
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if isinstance(v, dict):
                item_field = field.message_type.fields_by_name["value"]
                for k in v:
                    v[k] = _value(v[k], item_field, depth)
        elif field.is_repeated:
            if isinstance(v, list):
                v[:] = [_value(item, field, depth) for item in v]
        else:
            value[key] = _value(v, field, depth)


_JSON_NAMES: dict[Any, dict[str, FieldDesc]] = {}


def _by_json_name(desc: MessageDesc) -> dict[str, FieldDesc]:
    found = _JSON_NAMES.get(desc)
    if found is None:
        found = _JSON_NAMES[desc] = {f.json_name: f for f in desc.fields}
    return found


def _value(item: Any, field: FieldDesc, depth: int) -> Any:
    if field.message_type is not None:
        name = field.message_type.full_name
        wrapped = _WRAPPED.get(name)
        if wrapped is not None:
            return _scalar(item, wrapped, field.json_name)
        if not name.startswith("google.protobuf.") and not isinstance(item, dict):
            raise HttpError.invalid(f"field {field.json_name}: expected an object")  # json_format takes ""
        _message(item, field.message_type, depth + 1)
        return item
    enum = field.enum_type
    if enum is not None and enum.full_name != "google.protobuf.NullValue":
        if isinstance(item, bool) or (isinstance(item, str) and item not in enum.values_by_name) or \
                (isinstance(item, float) and not item.is_integer()):
            raise HttpError.invalid(f"field {field.json_name}: {repr(item)[:64]} is not one of "
                                    f"{', '.join(enum.values_by_name)} or an enum number")
        return item
    return _scalar(item, field.type, field.json_name)


def _scalar(item: Any, kind: int, name: str) -> Any:
    if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT) and isinstance(item, bool):
        raise HttpError.invalid(f"field {name}: expected a number, got a boolean")
    if kind == _T.TYPE_FLOAT and isinstance(item, int | float) and FLT_MAX < abs(item) <= FLOAT_JSON_MAX:
        return math.copysign(FLT_MAX, item)
    if kind == _T.TYPE_BYTES and isinstance(item, str) and not _BASE64.fullmatch(item):
        raise HttpError.invalid(f"field {name}: expected base64")
    if kind in _INTS and isinstance(item, str) and not _INTS[kind].fullmatch(item):
        raise HttpError.invalid(f"field {name}: expected an integer")  # int() takes " 1", "1_0", other scripts
    return item
