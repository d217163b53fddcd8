"""HTTP/JSON <-> protobuf, with the proto3 JSON mapping of ``google.protobuf.json_format``. Pure.

Plain messages go through :mod:`agentmesh.bridge.protojson` (the same mapping, compiled per message type);
whatever it declines, json_format does.

Requests accept the canonical lowerCamelCase names and the original proto field names; unknown
fields are refused. Responses use lowerCamelCase, enums by name, 64-bit integers as strings, and
omit fields at their default value (the proto3 canonical JSON). Every failure is a 400 naming the
field; nesting deeper than :data:`MAX_DEPTH` is refused before any parser recurses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agentmesh.bridge.checks import MAX_DEPTH, check_depth, check_request
from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.protojson import parse_into, to_dict
from agentmesh.bridge.routes import HttpRule

if TYPE_CHECKING:
    from agentmesh.bridge.schemas import FieldDesc, MessageDesc

__all__ = ["EMPTY", "MAX_DEPTH", "build_request", "parse_json", "to_json"]


class _NoBody:
    """A request without a body (unlike a JSON ``null`` body, which is refused)."""

    def __repr__(self) -> str:
        return "EMPTY"


EMPTY: Final = _NoBody()
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # (json.dumps makes one per call)
_PARSE_ERRORS = (json_format.ParseError, ValueError, TypeError, KeyError, AttributeError, RecursionError)


class _DuplicateMember(ValueError):
    pass


class _BareConstant(ValueError):
    pass


def _no_bare_constants(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259), though Python's parser takes
    them; the token parser refuses them too. A float field takes the proto3 strings ``"NaN"`` etc."""
    raise _BareConstant(name)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose member names are unique: a duplicate could be read differently by the
    agent, a proxy or a log reader (which value counts?), so it is refused, never resolved."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateMember(key[:64])
            seen.add(key)
    return obj


def parse_json(body: bytes) -> Any:
    """The JSON value of a UTF-8 request body (depth-checked first); :data:`EMPTY` for an empty body."""
    if not body:
        return EMPTY
    check_depth(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HttpError.invalid(f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_members, parse_constant=_no_bare_constants)
    except _DuplicateMember as e:
        raise HttpError.invalid(f"request body has the member {e.args[0]!r} twice") from None
    except _BareConstant as e:
        raise HttpError.invalid(f"request body is not valid JSON: {e.args[0]} is not a JSON value "
                                f"(a float field takes the string \"{e.args[0]}\")") from None
    except json.JSONDecodeError as e:
        raise HttpError.invalid(f"request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") \
            from None
    except (ValueError, RecursionError):
        raise HttpError.invalid("request body is not valid JSON") from None


def build_request(message: Message, rule: HttpRule | None, body: Any, params: Mapping[str, str],
                  query: Sequence[tuple[str, str]] = ()) -> Message:
    """Fills ``message`` from the body (per the rule's ``body``), path variables and query parameters.

    The default route (``rule`` None) and ``body: "*"`` take the whole body (a JSON object, or
    :data:`EMPTY`); ``body: "field"`` puts it in that field and the query fills the rest; no body:
    the query fills the message.
    """
    desc = type(message).DESCRIPTOR  # (a field named DESCRIPTOR would shadow it on the instance)
    whole = rule is None or rule.body == "*"
    if whole:
        doc = {} if body is EMPTY else body
        if not isinstance(doc, dict):
            raise HttpError.invalid("request body must be a JSON object")
    else:
        doc = {}
        if rule is not None and rule.body and body is not EMPTY:
            if body is None:
                raise HttpError.invalid("request body must not be null")
            doc[desc.fields_by_name[rule.body].json_name] = body
    if not parse_into(doc, message, MAX_DEPTH):  # (a document it takes, check_request passes unchanged: tested)
        check_request(doc, desc)
        _parse(doc, message)
    bound: dict[str, Any] = {}  # merged after the body: a path variable wins over the same body field
    for name, value in params.items():
        _assign(bound, desc, name, value, where="path variable")
    if not whole:
        for name, value in query:
            _assign(bound, desc, name, value, where="query parameter")
    if bound:
        _parse(bound, message)
    return message


def _parse(doc: dict[str, Any], message: Message) -> None:
    """Merges ``doc`` into ``message`` (json_format merges: scalars replace, repeated fields append)."""
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=False, max_recursion_depth=MAX_DEPTH)
    except _PARSE_ERRORS as e:
        raise HttpError.invalid(f"invalid request: {e}") from None


def to_json(message: Message, response_body: str = "") -> bytes:
    """The canonical proto3 JSON of ``message`` (or of its field ``response_body``), compact UTF-8."""
    doc: Any = to_dict(message)
    if doc is None:
        doc = json_format.MessageToDict(message)
    if response_body:
        field = message.DESCRIPTOR.fields_by_name[response_body]
        doc = doc.get(field.json_name, _default_json(message, field))
    return _ENCODER.encode(doc).encode("utf-8")


def _default_json(message: Message, field: FieldDesc) -> Any:
    full = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return full.get(field.json_name, {} if field.message_type is not None else None)


def _assign(doc: dict[str, Any], desc: MessageDesc, path: str, value: str, *, where: str) -> None:
    """Sets a dotted field path from a path variable or query parameter (repeated: appended)."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        field = desc.fields_by_name.get(part) or _by_json_name(desc, part)
        if field is None:
            raise HttpError.invalid(f"{where} {path!r}: {desc.full_name} has no field {part!r}")
        key = field.json_name
        if i < len(parts) - 1:
            if field.message_type is None or _is_repeated(field):
                raise HttpError.invalid(f"{where} {path!r}: {part!r} is not a message field")
            child = doc.get(key)
            if not isinstance(child, dict):
                child = doc[key] = {}
            doc, desc = child, field.message_type
            continue
        if field.message_type is not None and not _is_wrapper(field.message_type):
            raise HttpError.invalid(f"{where} {path!r}: a message field cannot be set from a string")
        scalar = _scalar(field, value, path, where)
        if _is_repeated(field):
            existing = doc.get(key)
            doc[key] = [*(existing if isinstance(existing, list) else []), scalar]
        elif key in doc:
            raise HttpError.invalid(f"{where} {path!r} is given more than once")
        else:
            doc[key] = scalar


def _scalar(field: FieldDesc, value: str, path: str, where: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL or (
            field.message_type is not None and field.message_type.full_name == "google.protobuf.BoolValue"):
        if value not in ("true", "false"):
            raise HttpError.invalid(f"{where} {path!r}: expected true or false")
        return value == "true"
    return value  # json_format parses numbers, enums and bytes from their string forms


def _by_json_name(desc: MessageDesc, name: str) -> FieldDesc | None:
    return next((f for f in desc.fields if f.json_name == name), None)


def _is_repeated(field: FieldDesc) -> bool:
    return bool(field.is_repeated)


def _is_wrapper(desc: MessageDesc) -> bool:
    return desc.full_name.startswith("google.protobuf.") and desc.full_name.endswith("Value") and \
        desc.full_name not in ("google.protobuf.Value", "google.protobuf.ListValue")
