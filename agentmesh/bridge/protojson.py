"""The proto3 JSON mapping of plain messages, compiled once per message type: json_format's fast path.

Why this is hand-written (beside ``google.protobuf.json_format``, which stays the reference): json_format is
pure Python and generic (per field: descriptor look-ups, well-known-type checks, an error path string, layers
of conversion); on the bridge's hot path that was ~10 % of the bridge process's CPU per request (``python -m
benchmarks.profile --bridge --txn-reuse``). Here each message type gets, once, a setter per JSON member name
and a getter per field.

It handles only what it can handle exactly as json_format does, and **declines** everything else:
:func:`parse_into` returns False (having cleared the message) and :func:`to_dict` returns None, and the
caller then runs json_format, so every error message and every unusual case is json_format's own:

* declined types: well-known types (``google.protobuf.*``: wrappers, Timestamp, Struct, Any...), float
  (32-bit) and, when parsing, bytes; enums with custom JSON names; extensions; 64-bit integers given as
  strings; map keys that are not strings;
* declined values: JSON ``null``, a value of another JSON type than the field's (e.g. a string for an
  int32), a string that is not valid UTF-8 text (lone surrogates), an enum name the enum lacks, an
  integer out of the field's range, two members of one oneof, nesting deeper than the parse limit.

``tests/bridge/test_protojson.py`` checks over generated documents that json_format reads and writes the same.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

if TYPE_CHECKING:
    from agentmesh.bridge.schemas import FieldDesc, MessageDesc

__all__ = ["parse_into", "to_dict"]

_F = FieldDescriptor
_NO: Final = object()  # a converter's "decline"
_INT32_TYPES = frozenset({_F.CPPTYPE_INT32, _F.CPPTYPE_UINT32})
_INT64_TYPES = frozenset({_F.CPPTYPE_INT64, _F.CPPTYPE_UINT64})
_DOUBLE_INT = 2**53  # an integer a double holds exactly (json_format: float(value))

Convert = Callable[[Any], Any]  # a JSON value -> the field's value, or _NO
#: (message, JSON value, nesting levels left) -> whether it was set (False: decline)
Setter = Callable[[Message, Any, int], bool]
Getter = Callable[[Any], Any]  # a field's value -> its JSON value, or _NO


def _text(value: Any) -> Any:
    if type(value) is not str:
        return _NO
    if not value.isascii():
        try:
            value.encode("utf-8")  # lone surrogates (json.loads makes them from "\ud800") are not text
        except UnicodeEncodeError:
            return _NO
    return value


def _bool(value: Any) -> Any:
    return value if type(value) is bool else _NO


def _int(value: Any) -> Any:
    return value if type(value) is int else _NO  # the field's range is checked when it is set


def _double(value: Any) -> Any:
    if type(value) is float:
        return value if math.isfinite(value) else _NO
    if type(value) is int and -_DOUBLE_INT <= value <= _DOUBLE_INT:
        return float(value)
    return _NO


def _message_type(field: FieldDesc) -> MessageDesc:
    desc = field.message_type
    assert desc is not None, "a message or map field"
    return desc


def _enum_type(field: FieldDesc) -> Any:
    enum = field.enum_type
    assert enum is not None, "an enum field"
    return enum


def _entry_fields(field: FieldDesc) -> tuple[FieldDesc, FieldDesc]:
    """The key and value fields of a map field's entry type."""
    entry = _message_type(field).fields_by_name
    return entry["key"], entry["value"]


def _plain(desc: MessageDesc) -> bool:
    """A message type json_format maps member by member (not a well-known type with a JSON form of its own)."""
    return not desc.full_name.startswith("google.protobuf.") and desc.file.name != "google/protobuf/wrappers.proto"


def _is_map(field: FieldDesc) -> bool:
    return field.type == _F.TYPE_MESSAGE and _message_type(field).has_options \
        and bool(_message_type(field).GetOptions().map_entry)


def _enum_names(field: FieldDesc) -> dict[int, str] | None:
    """number -> name of an enum whose JSON names are its value names (None: one has a custom JSON name)."""
    enum = _enum_type(field)
    if enum.full_name == "google.protobuf.NullValue" or any(v.GetOptions().ListFields() for v in enum.values):
        return None
    # json_format writes values_by_number.get(n): of aliases, the first declared (items() yields every alias)
    return {number: enum.values_by_number.get(number).name for number in enum.values_by_number}


def _converter(field: FieldDesc) -> Convert | None:
    """How a JSON value becomes the value of a scalar field, or None: json_format's (never here)."""
    cpp = field.cpp_type
    if cpp == _F.CPPTYPE_STRING:
        return _text if field.type == _F.TYPE_STRING else None  # bytes: base64 variants are json_format's
    if cpp == _F.CPPTYPE_BOOL:
        return _bool
    if cpp in _INT32_TYPES or cpp in _INT64_TYPES:
        return _int
    if cpp == _F.CPPTYPE_DOUBLE:
        return _double
    if cpp == _F.CPPTYPE_ENUM and _enum_names(field) is not None:
        numbers = {name: value.number for name, value in _enum_type(field).values_by_name.items()}

        def enum(value: Any) -> Any:
            return numbers.get(value, _NO) if type(value) is str else _NO

        return enum
    return None  # float (32-bit): json_format's range checks and shortest form


def _unread(message: Message, value: Any, depth: int) -> bool:
    """The setter of a field whose JSON form is json_format's to read: a document naming it is declined."""
    return False


def _unwritten(value: Any) -> Any:
    """The getter of a field whose JSON form is json_format's to write: a message with it set is declined."""
    return _NO


# ---------------------------------------------------------------------------------------------- JSON -> message
class _Reader:
    """The setters of one message type, by JSON member name (json_name first, then the proto name)."""

    def __init__(self, desc: MessageDesc) -> None:
        self.setters: dict[str, tuple[Setter, str | None]] | None = None
        if not _plain(desc):
            return
        by_field = {}
        for field in desc.fields:
            setter = _setter(field) or _unread
            by_field[field.name] = (setter, field.containing_oneof.name if field.containing_oneof is not None else None)
        # a member names the field of that JSON name, else the field of that proto name (json_format's order)
        setters = {field.name: by_field[field.name] for field in desc.fields}
        setters.update((field.json_name, by_field[field.name]) for field in desc.fields)
        # json_format tracks oneof names among the member names it saw: a clash is its to report
        if any(o.name in setters for o in desc.oneofs):
            return
        self.setters = setters


@functools.cache  # (per message type, built on first use)
def _reader(desc: MessageDesc) -> _Reader:
    return _Reader(desc)


def _read(doc: Any, message: Message, depth: int) -> bool:
    if type(doc) is not dict or depth < 2:  # (json_format refuses a message past its last level: declined early)
        return False
    setters = _reader(message.DESCRIPTOR).setters
    if setters is None:
        return False
    seen: set[str] | None = None
    for key, value in doc.items():
        entry = setters.get(key)
        if entry is None or value is None:
            return False
        setter, oneof = entry
        if oneof is not None:
            if seen is None:
                seen = set()
            elif oneof in seen:
                return False
            seen.add(oneof)
        if not setter(message, value, depth):
            return False
    return True


def _setter(field: FieldDesc) -> Setter | None:
    name = field.name
    if field.is_extension:
        return None
    if _is_map(field):
        return _map_setter(field)
    if field.cpp_type == _F.CPPTYPE_MESSAGE:
        if not _plain(_message_type(field)):
            return None
        if field.is_repeated:
            def messages(message: Message, value: Any, depth: int) -> bool:
                if type(value) is not list:
                    return False
                message.ClearField(name)
                repeated = getattr(message, name)
                return all(_read(item, repeated.add(), depth - 1) for item in value)

            return messages

        def one_message(message: Message, value: Any, depth: int) -> bool:
            if type(value) is not dict:
                return False
            child = getattr(message, name)
            child.SetInParent()
            return _read(value, child, depth - 1)

        return one_message
    convert = _converter(field)
    if convert is None:
        return None
    if field.is_repeated:
        def scalars(message: Message, value: Any, depth: int) -> bool:
            if type(value) is not list:
                return False
            items = [convert(item) for item in value]
            if _NO in items:
                return False
            message.ClearField(name)
            getattr(message, name).extend(items)
            return True

        return scalars

    def scalar(message: Message, value: Any, depth: int) -> bool:
        converted = convert(value)
        if converted is _NO:
            return False
        setattr(message, name, converted)
        return True

    return scalar


def _map_setter(field: FieldDesc) -> Setter | None:
    name = field.name
    key_field, value_field = _entry_fields(field)
    if key_field.type != _F.TYPE_STRING:
        return None  # int and bool keys arrive as strings: json_format's conversions
    put = _map_value(value_field)
    if put is None:
        return None

    def entries(message: Message, value: Any, depth: int) -> bool:
        if type(value) is not dict:
            return False
        message.ClearField(name)
        held = getattr(message, name)
        return all(_text(key) is not _NO and put(held, key, item, depth) for key, item in value.items())

    return entries


def _map_value(field: FieldDesc) -> Callable[[Any, str, Any, int], bool] | None:
    """How one value of a map is set (a message read into its entry, a scalar converted), or None."""
    if field.cpp_type == _F.CPPTYPE_MESSAGE:
        if not _plain(_message_type(field)):
            return None
        return lambda held, key, item, depth: _read(item, held[key], depth - 1)
    convert = _converter(field)
    if convert is None:
        return None

    def scalar(held: Any, key: str, item: Any, depth: int) -> bool:
        converted = convert(item)
        if converted is _NO:
            return False
        held[key] = converted
        return True

    return scalar


def parse_into(doc: Any, message: Message, max_depth: int) -> bool:
    """Fills the empty ``message`` from the JSON object ``doc`` as ``json_format.ParseDict(doc, message,
    max_recursion_depth=max_depth)`` would; False (the message cleared) when it declines: run json_format."""
    try:
        done = _read(doc, message, max_depth)
    except (ValueError, TypeError, AttributeError):  # a value out of the field's range, a type upb refuses; a
        done = False  # field named like a message method or DESCRIPTOR (json_format fails on it: its error)
    if not done:
        type(message).Clear(message)  # (the method: a field named "Clear" would shadow it on the instance)
    return done


# ---------------------------------------------------------------------------------------------- message -> JSON
def _double_json(value: float) -> Any:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def _getter(field: FieldDesc) -> Getter | None:
    """How a field's value is written (json_format's _FieldToJsonObject), or None: json_format's."""
    cpp = field.cpp_type
    if cpp == _F.CPPTYPE_MESSAGE:
        if not _plain(_message_type(field)):
            return None
        return _write
    if cpp == _F.CPPTYPE_STRING:
        if field.type == _F.TYPE_BYTES:
            return lambda value: base64.b64encode(value).decode("utf-8")
        return lambda value: value
    if cpp == _F.CPPTYPE_BOOL or cpp in _INT32_TYPES:
        return lambda value: value
    if cpp in _INT64_TYPES:
        return str
    if cpp == _F.CPPTYPE_DOUBLE:
        return _double_json
    if cpp == _F.CPPTYPE_ENUM:
        names = _enum_names(field)
        if names is None:
            return None
        closed = _enum_type(field).is_closed  # an unknown number in a closed enum: json_format's error

        def enum(value: int) -> Any:
            name = names.get(value)
            if name is None:
                return _NO if closed else value
            return name

        return enum
    return None


class _Writer:
    """The getters of one message type, by field descriptor, with each field's JSON name."""

    def __init__(self, desc: MessageDesc) -> None:
        self.getters: dict[Any, tuple[str, Getter, int]] | None = None  # field -> (name, getter, shape)
        if not _plain(desc):
            return
        getters: dict[Any, tuple[str, Getter, int]] = {}
        for field in desc.fields:
            if _is_map(field):
                key_field, value_field = _entry_fields(field)
                getter, shape = _getter(value_field), _MAP_BOOL if key_field.type == _F.TYPE_BOOL else _MAP
            else:
                getter, shape = _getter(field), _LIST if field.is_repeated else _ONE
            getters[field] = (field.json_name, getter or _unwritten, shape)
        self.getters = getters


_ONE, _LIST, _MAP, _MAP_BOOL = range(4)


@functools.cache  # (per message type, built on first use)
def _writer(desc: MessageDesc) -> _Writer:
    return _Writer(desc)


def _write(message: Any) -> Any:
    getters = _writer(message.DESCRIPTOR).getters
    if getters is None:
        return _NO
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        entry = getters.get(field)
        if entry is None:  # an extension
            return _NO
        name, get, shape = entry
        if shape == _ONE:
            written = get(value)
            if written is _NO:
                return _NO
        elif shape == _LIST:
            written = [get(item) for item in value]
            if _NO in written:
                return _NO
        else:
            written = {}
            for key in value:
                item = get(value[key])
                if item is _NO:
                    return _NO
                written[("true" if key else "false") if shape == _MAP_BOOL else str(key)] = item
        out[name] = written
    return out


def to_dict(message: Message) -> dict[str, Any] | None:
    """``json_format.MessageToDict(message)`` (its default options), or None when it declines: run json_format."""
    try:
        written = _write(message)
    except (TypeError, AttributeError):  # a field named like a message method or DESCRIPTOR: json_format's error
        return None
    return None if written is _NO else written
