"""Strict parsing of a compact JWS before any library sees it: shape, base64url, JSON, duplicates.

Every failure is a :class:`TokenError` with a fixed message that quotes nothing from the token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

from agentmesh.errors import TokenError
from agentmesh.tokens.crypto import b64url_decode

__all__ = ["ParsedToken", "parse_compact"]


@dataclass(frozen=True, slots=True)
class ParsedToken:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise _Duplicate(k)
        obj[k] = v
    return obj


def _no_constant(name: str) -> NoReturn:
    raise ValueError(name)  # NaN, Infinity, -Infinity are not JSON


_decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        text = b64url_decode(segment).decode("utf-8")
        obj = _decoder.decode(text)
    except _Duplicate:
        raise TokenError(f"token {what} has duplicate members") from None
    except (ValueError, RecursionError):  # also UnicodeDecodeError, binascii.Error
        raise TokenError(f"token {what} is malformed") from None
    if not isinstance(obj, dict):
        raise TokenError(f"token {what} is not a JSON object")
    return obj


def parse_compact(token: object, max_bytes: int) -> ParsedToken:
    """Splits and decodes ``header.payload.signature``; checks size first, before any parsing."""
    if not isinstance(token, str) or not token:
        raise TokenError("token missing")
    if len(token) > max_bytes:
        raise TokenError("token too large")
    if not token.isascii():
        raise TokenError("token is malformed")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is malformed (expected three segments)")
    h, p, s = parts
    if not h or not p:
        raise TokenError("token is malformed")
    if not s:
        raise TokenError("token signature missing")
    header = _json_object(h, "header")
    claims = _json_object(p, "payload")
    try:
        signature = b64url_decode(s)
    except ValueError:
        raise TokenError("token signature is malformed") from None
    return ParsedToken(header, claims, f"{h}.{p}".encode("ascii"), signature)
