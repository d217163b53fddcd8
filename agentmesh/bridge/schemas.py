"""JSON Schema (OpenAPI 3.1 dialect) of protobuf messages, as the proto3 JSON mapping writes them. Pure.

Messages and enums become ``components/schemas`` entries named by their full proto name (so
recursive messages are plain ``$ref`` cycles); fields use their lowerCamelCase JSON names (the
original names are accepted too, see :mod:`agentmesh.bridge.transcode`). 64-bit integers are
strings or integers, floats may be ``"NaN"``/``"Infinity"``, bytes are base64, maps are objects,
and the well-known types have their JSON forms (Struct is an object, Timestamp an RFC 3339
string, Duration ``"1.5s"``, wrappers their scalar or null, ...).
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING, Any, TypeAlias

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

if TYPE_CHECKING:  # the stubs type descriptors as the pure-Python or the upb class
    from google._upb import _message as _upb

    MessageDesc: TypeAlias = Descriptor | _upb.Descriptor
    FieldDesc: TypeAlias = FieldDescriptor | _upb.FieldDescriptor
    EnumDesc: TypeAlias = EnumDescriptor | _upb.EnumDescriptor

# (MessageDesc and FieldDesc exist for type checkers only: import them under TYPE_CHECKING)
__all__ = ["BASE64_PATTERN", "FLOAT_JSON_MAX", "INT_PATTERNS", "REF", "Schema", "SchemaBuilder"]

REF = "#/components/schemas/"
Schema = dict[str, Any]

# integers are JSON numbers or decimal strings (64-bit ones are written as strings); a pattern
# cannot bound a number's range, so an over-long digit string still gets a 400
_SIGNED, _UNSIGNED = "^-?[0-9]{1,%d}$", "^[0-9]{1,%d}$"
_INT32_RANGE = {"minimum": -(2**31), "maximum": 2**31 - 1}
_INT32 = {"type": ["integer", "string"], "format": "int32", "pattern": _SIGNED % 10, **_INT32_RANGE}
_UINT32 = {"type": ["integer", "string"], "format": "int64", "pattern": _UNSIGNED % 10,
           "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": ["string", "integer"], "format": "int64", "pattern": _SIGNED % 19,
          "minimum": -(2**63), "maximum": 2**63 - 1}
_UINT64 = {"type": ["string", "integer"], "format": "uint64", "pattern": _UNSIGNED % 20,
           "minimum": 0, "maximum": 2**64 - 1}
_SPECIAL_FLOATS = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
#: the largest float32 as json_format writes it (3.4028235e+38, just above the exact FLT_MAX)
FLOAT_JSON_MAX = 3.4028235e38
_DOUBLE = {"oneOf": [{"type": "number"}, _SPECIAL_FLOATS]}
_FLOAT = {"oneOf": [{"type": "number", "format": "float", "minimum": -FLOAT_JSON_MAX,
                     "maximum": FLOAT_JSON_MAX},
                    _SPECIAL_FLOATS]}
#: base64 (standard or URL-safe alphabet, padding optional), as the bridge accepts bytes fields
BASE64_PATTERN = "^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$"
_BYTES = {"type": "string", "format": "byte", "contentEncoding": "base64", "pattern": BASE64_PATTERN}

_T = FieldDescriptor
_SCALARS: dict[int, Schema] = {
    _T.TYPE_DOUBLE: _DOUBLE, _T.TYPE_FLOAT: _FLOAT,
    _T.TYPE_INT32: _INT32, _T.TYPE_SINT32: _INT32, _T.TYPE_SFIXED32: _INT32,
    _T.TYPE_UINT32: _UINT32, _T.TYPE_FIXED32: _UINT32,
    _T.TYPE_INT64: _INT64, _T.TYPE_SINT64: _INT64, _T.TYPE_SFIXED64: _INT64,
    _T.TYPE_UINT64: _UINT64, _T.TYPE_FIXED64: _UINT64,
    _T.TYPE_BOOL: {"type": "boolean"}, _T.TYPE_STRING: {"type": "string"}, _T.TYPE_BYTES: _BYTES,
}
_MAP_KEYS: dict[int, str] = {  # JSON object keys of non-string map keys
    _T.TYPE_BOOL: "^(true|false)$",
    **dict.fromkeys((_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32), _SIGNED % 10),
    **dict.fromkeys((_T.TYPE_UINT32, _T.TYPE_FIXED32), _UNSIGNED % 10),
    **dict.fromkeys((_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64), _SIGNED % 19),
    **dict.fromkeys((_T.TYPE_UINT64, _T.TYPE_FIXED64), _UNSIGNED % 20),
}
#: integer field types, whose string forms the bridge checks against these patterns
INT_PATTERNS: dict[int, str] = {
    **dict.fromkeys((_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32, _T.TYPE_INT64, _T.TYPE_SINT64,
                     _T.TYPE_SFIXED64), "^-?[0-9]+$"),
    **dict.fromkeys((_T.TYPE_UINT32, _T.TYPE_FIXED32, _T.TYPE_UINT64, _T.TYPE_FIXED64), "^[0-9]+$"),
}
_WRAPPERS = {
    "DoubleValue": _DOUBLE, "FloatValue": _FLOAT, "Int64Value": _INT64, "UInt64Value": _UINT64,
    "Int32Value": _INT32, "UInt32Value": _UINT32, "BoolValue": {"type": "boolean"},
    "StringValue": {"type": "string"}, "BytesValue": _BYTES,
}
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Any": {"type": "object", "required": ["@type"], "properties": {"@type": {"type": "string"}},
                            "description": "any message, tagged with its type URL"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "any JSON value"},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$",
                                 "description": "seconds with an 's' suffix, e.g. \"1.5s\""},
    "google.protobuf.FieldMask": {"type": "string", "description": "comma-separated lowerCamel field paths"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    **{f"google.protobuf.{name}": {"anyOf": [s, {"type": "null"}]} for name, s in _WRAPPERS.items()},
}


_NOT_NULL: Schema = {"not": {"type": "null"}}


def _nullable(schema: Schema) -> Schema:
    """The proto3 JSON mapping reads ``null`` as "unset" for every field (not for list items or map values)."""
    if not schema or schema.get("type") == "null":
        return schema
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = schema[key]
            return schema if {"type": "null"} in options else {**schema, key: [*options, {"type": "null"}]}
    kind = schema.get("type")
    types = [kind] if isinstance(kind, str) else list(kind or [])
    return {**schema, "type": [*types, "null"]} if types else schema


class SchemaBuilder:
    """Collects the component schemas of every message reached from the ones asked for."""

    def __init__(self) -> None:
        self.components: dict[str, Schema] = {}

    def message(self, desc: MessageDesc) -> Schema:
        """A schema for ``desc``: inline for well-known types, else a ``$ref`` to its component."""
        known = _WELL_KNOWN.get(desc.full_name)
        if known is not None:
            return dict(known)
        name = desc.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages refer back to it
            self.components[name] = self._object(desc)
        return {"$ref": REF + name}

    def field(self, field: FieldDesc) -> Schema:
        """The schema of one field's JSON value (arrays for repeated fields, objects for maps)."""
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            schema: Schema = {"type": "object", "additionalProperties": self._single(value)}
            if key.type in _MAP_KEYS:
                schema["propertyNames"] = {"pattern": _MAP_KEYS[key.type]}
            return schema
        single = self._single(field)
        return {"type": "array", "items": single} if field.is_repeated else single

    def _single(self, field: FieldDesc) -> Schema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            if field.enum_type.full_name == "google.protobuf.NullValue":
                return {"type": "null"}
            return self._enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def _enum(self, desc: EnumDesc) -> Schema:
        name = desc.full_name
        if name not in self.components:
            names = {"type": "string", "enum": [v.name for v in desc.values]}
            self.components[name] = {"anyOf": [names, {"type": "integer", **_INT32_RANGE}],
                                     "description": f"enum {name}: a value name (as written), or its number"}
        return {"$ref": REF + name}

    def _object(self, desc: MessageDesc) -> Schema:
        schema: Schema = {
            "type": "object",
            "title": desc.name,
            "description": f"message {desc.full_name}",
            "properties": {f.json_name: _nullable(self.field(f)) for f in desc.fields},
            "additionalProperties": False,
        }
        exclusive: list[Schema] = []
        for oneof in desc.oneofs:  # at most one member of each oneof may be set (null means unset)
            names = [f.json_name for f in oneof.fields]
            exclusive.extend({"required": [a, b], "properties": {a: _NOT_NULL, b: _NOT_NULL}}
                             for a, b in combinations(names, 2))
        if exclusive:
            schema["not"] = {"anyOf": exclusive}
        return schema
