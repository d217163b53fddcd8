"""``google.api.http`` path templates, parsed once and matched against decoded path segments. Pure.

::

    Template = "/" Segments [ ":" Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;

``{name}`` is ``{name=*}`` (one segment); ``**`` (last only) matches the rest of the path. Matching
works on the segments of a path that :func:`agentmesh.bridge.edge.path_segments` already decoded
and checked (no encoded ``/`` or ``.``), so a variable never spans more segments than its pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentmesh.errors import ConfigError

__all__ = ["PathTemplate"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()+,;=@-]+")


@dataclass(frozen=True, slots=True)
class _Seg:
    kind: str  # "lit" | "*" | "**"
    text: str = ""
    var: str | None = None  # the field path this segment is captured into


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed template: its segments, the optional ``:verb`` and the variables, in order."""

    source: str
    segments: tuple[_Seg, ...]
    verb: str | None
    variables: tuple[str, ...]

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        if not template.startswith("/"):
            raise ConfigError(f"http rule {template!r}: a path template starts with '/'")
        body, verb = template[1:], None
        last_colon = body.rfind(":")
        if last_colon > body.rfind("}"):
            body, verb = body[:last_colon], body[last_colon + 1:]
            if not _LITERAL.fullmatch(verb):
                raise ConfigError(f"http rule {template!r}: invalid verb")
        segs: list[_Seg] = []
        variables: list[str] = []
        for part in _split(body, template):
            if part.startswith("{"):
                name, _, pattern = part[1:-1].partition("=")
                if not _IDENT.fullmatch(name) or name in variables:
                    raise ConfigError(f"http rule {template!r}: invalid variable {part!r}")
                variables.append(name)
                segs.extend(_Seg(s.kind, s.text, name) for s in _plain(pattern or "*", template))
            else:
                segs.extend(_plain(part, template))
        if any(s.kind == "**" for s in segs[:-1]):
            raise ConfigError(f"http rule {template!r}: '**' must be the last segment")
        return cls(template, tuple(segs), verb, tuple(variables))

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The variables captured from decoded ``segments``, or None if the path does not match."""
        if self.verb is not None:
            if not segments or not segments[-1].endswith(":" + self.verb):
                return None
            segments = [*segments[:-1], segments[-1][: -len(self.verb) - 1]]
        captured: dict[str, list[str]] = {}
        for i, seg in enumerate(self.segments):
            if seg.kind == "**":
                rest = segments[i:]
                if not rest or any(not s for s in rest):
                    return None
                if seg.var:
                    captured.setdefault(seg.var, []).extend(rest)
                return {k: "/".join(v) for k, v in captured.items()}
            if i >= len(segments) or not segments[i]:
                return None
            if seg.kind == "lit" and segments[i] != seg.text:
                return None
            if seg.var:
                captured.setdefault(seg.var, []).append(segments[i])
        if len(segments) != len(self.segments):
            return None
        return {k: "/".join(v) for k, v in captured.items()}

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: each variable one ``{field}`` parameter."""
        out: list[str] = []
        seen: set[str] = set()
        for seg in self.segments:
            if seg.var is not None:
                if seg.var not in seen:
                    seen.add(seg.var)
                    out.append("{" + seg.var + "}")
                continue
            out.append(seg.text if seg.kind == "lit" else seg.kind)
        return "/" + "/".join(out) + (f":{self.verb}" if self.verb else "")


def _split(body: str, template: str) -> list[str]:
    """Top-level segments; a ``{var=a/*}`` stays one part."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "/" and depth == 0:
            parts.append(body[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise ConfigError(f"http rule {template!r}: unbalanced braces")
    if depth:
        raise ConfigError(f"http rule {template!r}: unbalanced braces")
    parts.append(body[start:])
    if any(not p for p in parts):
        raise ConfigError(f"http rule {template!r}: empty segment")
    return parts


def _plain(pattern: str, template: str) -> list[_Seg]:
    out = []
    for part in pattern.split("/"):
        if part in ("*", "**"):
            out.append(_Seg(part))
        elif _LITERAL.fullmatch(part) and part not in (".", ".."):
            out.append(_Seg("lit", part))
        else:
            raise ConfigError(f"http rule {template!r}: invalid segment {part!r}")
    return out
