"""Checks of single config values, shared by the config's dataclasses (config.py, telemetryconfig.py).

Pure: each takes a value and the key it came from, and returns it or raises a one-line
:class:`~agentmesh.errors.ConfigError` naming that key (never quoting a secret: :func:`safe_endpoint`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from agentmesh.errors import ConfigError
from agentmesh.identity import SpiffeId, validate_agent_name

__all__ = ["agent_names", "check_otlp_endpoint", "compile_method_globs", "did_you_mean", "host_port",
           "method_names", "otlp_target", "peers", "safe_endpoint"]


def did_you_mean(value: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid value nearest ``value``, or ``""`` when none is near."""
    near = difflib.get_close_matches(value, sorted(valid), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def compile_method_globs(globs: Sequence[str]) -> re.Pattern[str] | None:
    """One regex matching any of ``globs`` (``*`` matches any run of characters), or None for "any"."""
    if not globs or "*" in globs:
        return None
    alts = ("(?:" + ".*".join(re.escape(part) for part in g.split("*")) + ")" for g in globs)
    return re.compile("|".join(alts))


def host_port(v: str, key: str) -> str:
    """``host:port`` (a port from 0 to 65535), else a ConfigError naming ``key``."""
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected host:port, got {v!r}")
    return v


def safe_endpoint(endpoint: str) -> str:
    """An endpoint as it may be logged or quoted in an error: scheme, host and port (no user name, password,
    path, query or fragment); ``?`` for a part that cannot be read (``http://host:?``, or ``?``)."""
    try:
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        host = parts.hostname or "?"
    except ValueError:
        return "?"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ":?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}" if parts.scheme else f"{host}{port}"


def otlp_target(v: str) -> bool:
    """``host:port``, ``http://host:port`` or ``https://host:port`` (an OTLP/gRPC collector)."""
    parts = urlsplit(v if "://" in v else f"grpc://{v}")
    try:
        port = parts.port
    except ValueError:
        return False
    return parts.scheme in ("grpc", "http", "https") and bool(parts.hostname) and port is not None \
        and parts.path in ("", "/")


def check_otlp_endpoint(value: object, key: str) -> None:
    """An OTLP/gRPC collector's endpoint (``key``): ``host:port``, ``http://host:port`` (plaintext) or
    ``https://host:port``, and nothing that could carry a secret: no user info (any ``@``: a user name or a
    password), no query, no fragment (the OpenTelemetry exporter logs its endpoint with every failed
    export). The ConfigError is one line quoting the endpoint as :func:`safe_endpoint` shows it
    (scheme://host:port), never the value itself."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected host:port, http://host:port (plaintext) or https://host:port")
    if "@" in value:
        reason = ("must not carry a user name or password (a collector's credentials go in "
                  "OTEL_EXPORTER_OTLP_HEADERS)")
    elif "?" in value or "#" in value:
        reason = "must not carry a query or fragment"
    elif not otlp_target(value):
        reason = "expected host:port, http://host:port (plaintext) or https://host:port"
    else:
        return
    shown = safe_endpoint(value)
    got = f"got {shown!r}" + (" (shown as scheme://host:port only)" if shown != value else "")
    raise ConfigError(f"{key}: {reason}, {got}")


def method_names(where: str, methods: tuple[str, ...]) -> None:
    for m in methods:
        if not m.startswith("/") and m != "*":
            raise ConfigError(f"{where}: {m!r} must be a full gRPC method name like /pkg.Service/Method")


def agent_names(where: str, names: tuple[str, ...]) -> None:
    for name in names:
        try:
            validate_agent_name(name)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.message}") from None


def peers(where: str, items: tuple[str, ...], *, wildcards: bool = False) -> None:
    """Agent names or SPIFFE IDs (and, in a chain, ``*`` for one member and ``**`` for any number)."""
    for item in items:
        if wildcards and item in ("*", "**"):
            continue
        try:
            if item.startswith("spiffe://"):
                SpiffeId.parse(item)
            else:
                validate_agent_name(item)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.message}") from None
