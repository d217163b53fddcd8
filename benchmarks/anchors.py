"""Published figures the fixed-rate phase is read against, and issue 12's targets for it, as data.

Every anchor is *added* latency over the same traffic without the mesh, at 1000 requests per second, as
its publisher measured it on its own hardware (not this machine): a yardstick for the order of
magnitude, not a same-machine comparison. Where each figure comes from is in ``source`` (and in
benchmarks/README.md, "Published anchors").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANCHORS", "CPU_ANCHORS", "FIXED_RATE_TARGETS", "TARGET_RATE", "Anchor", "CpuAnchor", "FixedRateTarget"]

#: the rate (calls per second) at which the anchors were published and the targets are set
TARGET_RATE = 1000

ISTIO_120 = ("Istio docs, Performance and Scalability, 'Latency for Istio 1.20' (page source "
             "github.com/istio/istio.io content/en/docs/ops/deployment/performance-and-scalability/index.md, "
             "the revision of the 1.20/1.21 docs; https://istio.io/v1.21/docs/ops/deployment/performance-and-scalability)")
ISTIO_122 = ("Istio docs, Performance and Scalability, 'Latency for Istio 1.22' "
             "(https://istio.io/v1.23/docs/ops/deployment/performance-and-scalability)")
ISTIO_124 = ("Istio docs, Performance and Scalability, 'Sidecar and ztunnel resource usage', Istio 1.24 "
             "(https://istio.io/docs/ops/performance-and-scalability)")


@dataclass(frozen=True, slots=True)
class Anchor:
    name: str
    p50_ms: float | None  # added latency at that percentile; None: not published
    p90_ms: float | None
    p99_ms: float | None
    setup: str
    source: str


@dataclass(frozen=True, slots=True)
class CpuAnchor:
    name: str
    vcpu_per_1000rps: float
    setup: str
    source: str


ANCHORS = (
    Anchor("Istio sidecar pair", None, 0.228, 0.298,
           "Istio 1.20, Envoy client + server sidecars, telemetry v2; http/1.1, 1 kB, 1000 rps, 2-64 client "
           "connections, 2 proxy workers, mutual TLS", ISTIO_120),
    Anchor("Istio ambient (L4, two ztunnels)", None, 0.17, 0.20,
           "Istio 1.22, default ambient mode; http/1.1, 1 kB, 1000 rps, 1-64 client connections, 2 proxy "
           "workers, mutual TLS; CNCF Community Infrastructure Lab", ISTIO_122),
    Anchor("agentgateway", None, None, 0.37,
           "as quoted in issue 12", "figure as quoted in issue 12, source not found in the stored pages"),
)

CPU_ANCHORS = (
    CpuAnchor("Istio sidecar (one Envoy, 2 workers)", 0.20, "Istio 1.24, 1000 http rps, 1 kB; a call crosses two",
              ISTIO_124),
    CpuAnchor("Istio ztunnel (one, per node)", 0.06, "Istio 1.24, 1000 http rps, 1 kB; a call crosses two",
              ISTIO_124),
)


@dataclass(frozen=True, slots=True)
class FixedRateTarget:
    name: str  # the key of the target in latest.json's "targets"
    description: str
    bound: float  # value <= bound: met


FIXED_RATE_TARGETS = (
    FixedRateTarget("fixed_added_p50_ms", f"added p50 at {TARGET_RATE} rps <= 0.10 ms (open loop, v3 - v2)", 0.10),
    FixedRateTarget("fixed_added_p90_ms", f"added p90 at {TARGET_RATE} rps <= 0.20 ms", 0.20),
    FixedRateTarget("fixed_added_p99_ms", f"added p99 at {TARGET_RATE} rps <= 0.30 ms (Istio's sidecar pair: 0.298)",
                    0.30),
    FixedRateTarget("fixed_server_chain_us_per_call",
                    f"server chain <= 70 us CPU per call at {TARGET_RATE} rps (agent v3 - v2)", 70.0),
    FixedRateTarget("fixed_mesh_vcpu_per_1000rps",
                    "mesh CPU <= 0.15 vCPU per 1000 rps (server + client chains, at 1000 rps)", 0.15),
)
