"""The ``audit`` and ``metrics`` sections of the mesh config, as validated, frozen data (see config.py,
which re-exports them): where audit spans go and which exporter must work, and where each member's
metrics are served or pushed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agentmesh.configcheck import agent_names, check_otlp_endpoint, did_you_mean, host_port
from agentmesh.errors import ConfigError

__all__ = ["AUDIT_EXPORTERS", "AuditConfig", "MetricsConfig"]

AUDIT_EXPORTERS = ("none", "console", "jsonl", "otlp")


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``audit``. ``required`` (``audit.required: true``, or the name of an exporter, kept in
    ``required_exporter``): calls fail closed while that exporter cannot take spans; ``true`` names
    the jsonl exporter when it is enabled, else every enabled one (:attr:`required_exporters`)."""

    exporters: tuple[str, ...] = ("jsonl",)  # none | console | jsonl | otlp
    jsonl_path: Path | None = None
    otlp_endpoint: str | None = None
    required: bool = False
    required_exporter: str | None = None  # audit.required: <exporter name>
    payload_fields: tuple[str, ...] = ()  # allow-list of request fields recorded (after redaction)
    queue_size: int = 4096  # spans, per exporter
    service_name: str = "agentmesh"
    trace_housekeeping: bool = False  # spans for members' trust stream and token refreshes (refusals always)
    otlp_timeout: float = 5.0  # s one OTLP export may take (a silent collector holds the OTLP queue this long)
    jsonl_rotate_bytes: int = 64 * 1024 * 1024  # rotate the JSONL log past this size (0: never)
    jsonl_rotate_seconds: float = 0.0  # rotate it this long after its first record (0: never)
    jsonl_keep: int = 0  # rotated JSONL files kept, oldest deleted first (0: all of them)

    def __post_init__(self) -> None:
        for exp in self.exporters:
            if exp not in AUDIT_EXPORTERS:
                raise ConfigError(f"audit.exporters: unknown exporter {exp!r}"
                                  f"{did_you_mean(exp, AUDIT_EXPORTERS) or ' (' + ', '.join(AUDIT_EXPORTERS) + ')'}")
        if "otlp" in self.exporters and not self.otlp_endpoint:
            raise ConfigError("audit.otlp_endpoint: required when the otlp exporter is enabled")
        if self.otlp_endpoint is not None:
            check_otlp_endpoint(self.otlp_endpoint, "audit.otlp_endpoint")
        enabled = [e for e in self.exporters if e != "none"]
        if self.required_exporter is not None:
            if not self.required:
                raise ConfigError("audit.required: an exporter is named but required is false")
            if self.required_exporter not in enabled:
                raise ConfigError(f"audit.required: {self.required_exporter!r} is not an enabled exporter "
                                  f"(audit.exporters: {', '.join(self.exporters) or 'none'})"
                                  f"{did_you_mean(self.required_exporter, enabled)}")
        elif self.required and not enabled:
            raise ConfigError("audit.required: true, but audit.exporters enables no exporter")
        if not self.otlp_timeout > 0 or not math.isfinite(self.otlp_timeout):
            raise ConfigError(f"audit.otlp_timeout: expected a duration > 0, got {self.otlp_timeout!r}")
        for key, value in (("jsonl_rotate_bytes", self.jsonl_rotate_bytes), ("jsonl_keep", self.jsonl_keep)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"audit.{key}: expected an integer >= 0, got {value!r}")
        if not self.jsonl_rotate_seconds >= 0 or not math.isfinite(self.jsonl_rotate_seconds):
            raise ConfigError(f"audit.jsonl_rotate_seconds: expected a duration >= 0 (0: never), "
                              f"got {self.jsonl_rotate_seconds!r}")

    @property
    def required_exporters(self) -> tuple[str, ...]:
        """The exporters whose trouble makes calls fail closed: none unless ``required``."""
        if not self.required:
            return ()
        if self.required_exporter is not None:
            return (self.required_exporter,)
        enabled = tuple(dict.fromkeys(e for e in self.exporters if e != "none"))
        return ("jsonl",) if "jsonl" in enabled else enabled


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``metrics``: the Prometheus endpoint of each member (docs/OBSERVABILITY.md); none unless set.

    A member serves ``/metrics`` on ``addresses[name]``, else on ``host:port_base + i``, ``i`` its place
    in :meth:`MeshConfig.members` (control plane, agents in file order, bridge). Port 0: any free port.
    With ``otlp_endpoint`` (an OTLP/gRPC collector: ``host:port``, ``http://`` plaintext or ``https://``),
    each member also pushes the same series there every ``otlp_interval`` seconds.
    """

    addresses: Mapping[str, str] = field(default_factory=dict)  # member name -> host:port
    host: str = "127.0.0.1"
    port_base: int | None = None
    otlp_endpoint: str | None = None
    otlp_interval: float = 15.0  # seconds between pushes

    def __post_init__(self) -> None:
        if self.otlp_endpoint is not None:
            check_otlp_endpoint(self.otlp_endpoint, "metrics.otlp_endpoint")
        interval = self.otlp_interval
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not math.isfinite(interval) \
                or not 0.01 <= interval <= 86400:
            raise ConfigError(f"metrics.otlp_interval: expected seconds from 0.01 to 86400, got {interval!r}")
        for name, address in self.addresses.items():
            agent_names("metrics.addresses", (name,))
            host_port(address, f"metrics.addresses.{name}")
        if self.port_base is not None and (isinstance(self.port_base, bool) or not 1 <= self.port_base <= 65535):
            raise ConfigError(f"metrics.port_base: expected a port from 1 to 65535, got {self.port_base!r}")
        if not self.host:
            raise ConfigError("metrics.host: expected a host name or address")
