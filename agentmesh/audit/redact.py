"""The guarantee that no secret reaches an audit span.

Two functions, both pure:

* :func:`safe_attributes` masks any attribute whose KEY looks like a credential
  (authorization, token, secret, password, cookie, credential, api key, private key, key) and any
  part of a VALUE that looks like a JWT (``eyJ`` + base64url), a PEM block or a ``Bearer`` value.
  Every exporter applies it to every span's attributes and event attributes before writing, even
  though callers are expected to pass safe values already (defence in depth).
* :func:`payload_attributes` records only the request fields named in ``audit.payload_fields``
  (dotted paths); each value is redacted, then truncated. Nothing else of a payload is recorded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from google.protobuf import json_format
from google.protobuf.message import Message

from agentmesh.audit.attributes import PAYLOAD_PREFIX

__all__ = [
    "MAX_VALUE_CHARS",
    "REDACTED",
    "SafeValue",
    "payload_attributes",
    "redact_text",
    "safe_attributes",
    "safe_value",
    "sensitive_key",
]

REDACTED = "[REDACTED]"
#: Longest payload value recorded, in characters (after redaction).
MAX_VALUE_CHARS = 256
#: Most elements recorded of a repeated payload field.
MAX_ITEMS = 16

#: What survives redaction: JSON-compatible, and a valid OpenTelemetry attribute value.
SafeValue: TypeAlias = "str | bool | int | float | list[SafeValue] | dict[str, SafeValue] | None"

_SENSITIVE_KEY = re.compile(
    r"authori[sz]ation|token|secret|passw(or)?d|passphrase|cookie|credential"
    r"|api[._-]?key|private[._-]?key|(^|[._-])keys?($|[._-])",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    # A JWT/JWS/JWE: base64url JSON ("eyJ" is '{"') with or without its other segments.
    r"eyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,4}"
    # A PEM block; an unterminated one is masked to the end of the text.
    r"|-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)"
    # An HTTP bearer credential, whatever it contains.
    r"|\bBearer\s+\S+",
    re.IGNORECASE | re.DOTALL,
)


_KEY_VERDICTS: dict[str, bool] = {}  # attribute names are few and repeat on every span


def sensitive_key(key: str) -> bool:
    """True when an attribute named ``key`` could hold a credential."""
    verdict = _KEY_VERDICTS.get(key)
    if verdict is None:
        verdict = _SENSITIVE_KEY.search(key) is not None
        if len(_KEY_VERDICTS) < 4096:
            _KEY_VERDICTS[key] = verdict
    return verdict


def redact_text(text: str) -> str:
    """``text`` with every JWT, PEM block and bearer value replaced by ``[REDACTED]``."""
    if "eyJ" not in text and "-----" not in text and "earer" not in text.lower():
        return text  # the common case, without running the regex
    return _SECRET_VALUE.sub(REDACTED, text)


def safe_value(value: object) -> SafeValue:
    """A JSON-compatible copy of ``value`` with secrets masked (nested lists and maps included)."""
    kind = type(value)  # exact types first: the common attribute values, without isinstance chains
    if kind is str:
        return redact_text(value)  # type: ignore[arg-type]
    if kind is int or kind is float or kind is bool:
        return value  # type: ignore[return-value]
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return REDACTED  # binary (e.g. -bin metadata) is never recorded
    if isinstance(value, Mapping):
        return safe_attributes(value)
    if isinstance(value, Sequence):
        return [safe_value(v) for v in value]
    return redact_text(str(value))


def safe_attributes(attributes: Mapping[str, object] | None) -> dict[str, SafeValue]:
    """A copy of ``attributes`` in which no credential survives (see the module docstring)."""
    if not attributes:
        return {}
    out: dict[str, SafeValue] = {}
    for k, v in attributes.items():
        key = k if type(k) is str else str(k)  # (str() of a str key is the key: skip the call)
        out[key] = REDACTED if sensitive_key(key) else safe_value(v)
    return out


# ----------------------------------------------------------------------------- payloads


def payload_attributes(
    message: Message, allow_list: Iterable[str], *, max_chars: int = MAX_VALUE_CHARS
) -> dict[str, SafeValue]:
    """The allow-listed fields of a protobuf request, as ``agentmesh.payload.<path>`` attributes.

    A path is dotted: message fields by name, map entries by key (``metadata.lang``) and repeated
    elements by index (``input.0.text``). A repeated field without an index records up to 16
    elements. Missing or unset fields are left out. Every value is redacted and then truncated to
    ``max_chars``; a path whose own name looks like a credential is masked entirely.
    """
    out: dict[str, object] = {}
    for path in allow_list:
        found, value = _lookup(message, path.split("."))
        if found:
            out[PAYLOAD_PREFIX + path] = _leaf(value, max_chars)
    return safe_attributes(out)


def _lookup(node: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(node, Message):
            field = node.DESCRIPTOR.fields_by_name.get(part)
            if field is None or (field.has_presence and not node.HasField(part)):
                return False, None
            node = getattr(node, part)
        elif isinstance(node, Mapping):  # protobuf map fields are Mappings
            if part not in node:
                return False, None
            node = node[part]
        elif isinstance(node, Sequence) and not isinstance(node, str | bytes):  # repeated fields
            if not part.isdigit() or int(part) >= len(node):
                return False, None
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _leaf(value: Any, max_chars: int) -> object:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_scalar(v, max_chars) for v in list(value)[:MAX_ITEMS]]
    return _scalar(value, max_chars)


def _scalar(value: Any, max_chars: int) -> str | bool | int | float:
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return REDACTED  # bytes fields are never recorded
    if isinstance(value, Message):
        text = json.dumps(json_format.MessageToDict(value), separators=(",", ":"), sort_keys=True)
    elif isinstance(value, Mapping):
        text = json.dumps(dict(value.items()), separators=(",", ":"), sort_keys=True, default=str)
    else:
        text = str(value)
    text = redact_text(text)  # before truncating, so a cut never hides part of a secret from the regex
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
