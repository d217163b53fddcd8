"""The strings of a protobuf message: every set string field, recursively, within MAX_DEPTH levels.

Nested messages, repeated fields, map keys and values, and so the contents of
``google.protobuf.Struct``/``Value``/``ListValue``. The walk reads the serialised message a level at a
time, in C: each message type has a *shadow*, a message with the same field numbers in which every
string field and every message field is ``repeated bytes`` (and every other field is left out, read as
unknown). The messages of one type at one depth, concatenated, are parsed as one shadow message: its
fields then hold the strings of all of them, and the serialised messages of the next level. A level
costs a few C calls whatever its number of messages, where a walk of Python objects costs a
microsecond a message.

A message of at most :data:`SMALL` bytes (most requests) is walked as objects instead, field by field,
charged the same: for a few messages that costs less than parsing shadows.

What it reads is what the handler sees: the serialisation of the parsed message (one occurrence of
each singular field, unknown fields kept, and those have numbers no shadow field has). Every byte
parsed, message found and string collected is paid for, a level's messages by the level above them
and before they are parsed (a huge Struct is refused before its entries are read).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from agentmesh.guard.budget import MESSAGE_COST, PARSE_BYTES, STRING_COST, Budget

__all__ = ["MAX_DEPTH", "SEPARATOR", "SMALL", "collect"]

MAX_DEPTH = 64
SMALL = 4096  # bytes: a message walked as objects
SEPARATOR = "\n\x00\n"  # between two strings in the text collected: no pattern (\s, \b, ^) spans two fields

_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_POOL = descriptor_pool.DescriptorPool()  # the shadows' own: nothing else is added to it
_POOL_FILES: list[str] = []


_STRINGS, _MESSAGES, _ENTRIES = range(3)  # what a shadow field holds


@dataclass(frozen=True, slots=True)
class _Shadow:
    parse: type[Message]  # the shadow message class
    #: field number -> (_STRINGS, None) | (_MESSAGES, their type) | (_ENTRIES, the entries' shadow)
    fields: dict[int, tuple[int, Any]]
    cost: int = 0  # a map entry's: its key and its value, paid for before the entries are parsed


_shadows: dict[Descriptor, _Shadow] = {}
_building = threading.Lock()  # checks run in threads too: a shadow is added to the pool once


def _build(fields: list[int]) -> type[Message]:
    """A new message of ``repeated bytes`` fields numbered ``fields``, in a file of its own in the
    guard's pool."""
    name = f"S{len(_POOL_FILES)}"
    file = descriptor_pb2.FileDescriptorProto(name=f"agentmesh_guard_shadow/{name}.proto",
                                              package="agentmesh_guard_shadow", syntax="proto3")
    proto = file.message_type.add(name=name)
    for number in fields:
        proto.field.add(name=f"f{number}", number=number, label=_REPEATED, type=_BYTES)
    _POOL.Add(file)
    _POOL_FILES.append(name)
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"agentmesh_guard_shadow.{name}"))


def _shadow(descriptor: Descriptor) -> _Shadow:
    shadow = _shadows.get(descriptor)
    if shadow is None:
        with _building:
            shadow = _shadows.get(descriptor) or _new_shadow(descriptor)
            _shadows[descriptor] = shadow
    return shadow


def _new_shadow(descriptor: Descriptor) -> _Shadow:
    fields: dict[int, tuple[int, Any]] = {}
    for fd in descriptor.fields:
        if fd.type == FieldDescriptor.TYPE_STRING:
            fields[fd.number] = (_STRINGS, None)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and _type(fd).GetOptions().map_entry:
            fields[fd.number] = (_ENTRIES, _entry(_type(fd)))
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            fields[fd.number] = (_MESSAGES, _type(fd))
    return _Shadow(_build(list(fields)), fields)


def _type(fd: FieldDescriptor) -> Descriptor:
    assert fd.message_type is not None, "a message field has a message type"
    return fd.message_type


def _entry(entry: Descriptor) -> _Shadow:
    """A map entry's shadow: its key if a string, its value if a string or a message."""
    key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
    fields: dict[int, tuple[int, Any]] = {}
    if key.type == FieldDescriptor.TYPE_STRING:
        fields[1] = (_STRINGS, None)
    if value.type == FieldDescriptor.TYPE_STRING:
        fields[2] = (_STRINGS, None)
    elif value.type == FieldDescriptor.TYPE_MESSAGE:
        fields[2] = (_MESSAGES, _type(value))
    cost = sum(STRING_COST if kind == _STRINGS else MESSAGE_COST for kind, _ in fields.values())
    return _Shadow(_build(list(fields)), fields, cost)


def collect(message: Message, data: bytes, budget: Budget) -> str | None:
    """Every set string of ``message`` (map keys too), serialised as ``data``, joined by SEPARATOR; None
    when it nests messages over MAX_DEPTH levels."""
    if len(data) <= SMALL:
        strings: list[str] = []
        return SEPARATOR.join(strings) if _objects(message, strings, 0, budget) else None
    raw: list[bytes] = []
    level: dict[Descriptor, list[bytes]] = {cast(Descriptor, message.DESCRIPTOR): [data]}
    depth = 0
    while level:
        if depth > MAX_DEPTH:
            return None
        below: dict[Descriptor, list[bytes]] = {}
        for kind, payloads in level.items():
            _read(_shadow(kind), payloads[0] if len(payloads) == 1 else b"".join(payloads), raw, below, budget)
        level = below
        depth += 1
    # as the handler reads them (invalid UTF-8 in a proto2 string: each byte a "?")
    return SEPARATOR.encode().join(raw).decode("utf-8", "surrogateescape")


def _read(shadow: _Shadow, data: bytes, out: list[bytes], below: dict[Descriptor, list[bytes]],
          budget: Budget) -> None:
    """One level's messages of one type, concatenated (or a map's entries, paid for already): their
    strings to ``out``, their messages (map values that are messages too) to ``below``, by type."""
    budget.spend(len(data) // PARSE_BYTES)
    paid = shadow.cost > 0
    for fd, values in shadow.parse.FromString(data).ListFields():
        kind, what = shadow.fields[fd.number]
        if kind == _STRINGS:
            if not paid:
                budget.spend(STRING_COST * len(values))
            out.extend(values)
        elif kind == _MESSAGES:
            if not paid:
                budget.spend(MESSAGE_COST * len(values))
            below.setdefault(what, []).extend(values)
        else:
            budget.spend(what.cost * len(values))
            _read(what, b"".join(values), out, below, budget)


# The object walk: how each field is read, cached per field descriptor
_plans: dict[FieldDescriptor, tuple[int, bool, int]] = {}  # kind, map keys are strings, map values' kind
_SKIP, _STRING, _REPEATED_STRINGS, _MESSAGE, _REPEATED_MESSAGES, _MAP = range(6)


def _plan(fd: FieldDescriptor) -> tuple[int, bool, int]:
    plan = (_SKIP, False, _SKIP)
    if fd.type == FieldDescriptor.TYPE_STRING:
        plan = (_REPEATED_STRINGS if fd.is_repeated else _STRING, False, _SKIP)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE and _type(fd).GetOptions().map_entry:
        key, value = _type(fd).fields_by_name["key"], _type(fd).fields_by_name["value"]
        kinds = {FieldDescriptor.TYPE_STRING: _STRING, FieldDescriptor.TYPE_MESSAGE: _MESSAGE}
        plan = (_MAP, key.type == FieldDescriptor.TYPE_STRING, kinds.get(value.type, _SKIP))
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        plan = (_REPEATED_MESSAGES if fd.is_repeated else _MESSAGE, False, _SKIP)
    _plans[fd] = plan
    return plan


def _objects(message: Message, out: list[str], depth: int, budget: Budget) -> bool:
    """A small message's strings, read from its objects; False when nested over MAX_DEPTH. Charged as
    the level walk charges: a message by its parent, before it is walked."""
    if depth > MAX_DEPTH:
        return False
    for fd, value in message.ListFields():
        kind, str_keys, values = _plans.get(fd) or _plan(fd)
        if kind == _STRING:
            budget.spend(STRING_COST)
            out.append(value)
        elif kind == _REPEATED_STRINGS:
            budget.spend(STRING_COST * len(value))
            out.extend(value)
        elif kind == _MESSAGE:
            budget.spend(MESSAGE_COST)
            if not _objects(value, out, depth + 1, budget):
                return False
        elif kind == _REPEATED_MESSAGES:
            budget.spend(MESSAGE_COST * len(value))
            for item in value:  # (a loop: no generator per call, as all() over one would make)
                if not _objects(item, out, depth + 1, budget):
                    return False
        elif kind == _MAP:
            budget.spend((STRING_COST * str_keys + (STRING_COST if values == _STRING else
                                                     MESSAGE_COST if values == _MESSAGE else 0)) * len(value))
            if str_keys:
                out.extend(value)
            if values == _STRING:
                out.extend(value.values())
            elif values == _MESSAGE:
                for item in value.values():
                    if not _objects(item, out, depth + 1, budget):
                        return False
    return True
