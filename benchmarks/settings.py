"""The run presets and the variants, as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BRIDGE_TXN_REUSE", "BRIDGE_VARIANTS", "CONTROL_VARIANTS", "DEFAULT_RATES", "FIXED_RATE_VARIANTS", "FULL",
           "GATEWAY_PATH", "GATEWAY_VARIANTS", "PRESETS", "QUICK", "SMOKE", "UVLOOP_VARIANT", "VARIANTS", "Preset",
           "Variant"]

#: the FastAPI gateway's route (variant 6): the bridge's default route for the same method
GATEWAY_PATH = "/v1/agents/{agent}/agentmesh.v1.Agent/Invoke"
#: ``bridge.txn_reuse`` of variant 7's bridge (variant 5's keeps the default, 0: a transaction token per request)
BRIDGE_TXN_REUSE = "30s"
#: the REST bridge variants, each measured against both FastAPI gateways (variants 6 and 8)
BRIDGE_VARIANTS = (5, 7)
#: the gateways users build instead of the bridge: answering locally (6), forwarding to the bare agent (8)
GATEWAY_VARIANTS = (6, 8)
#: the fixed-rate (open-loop) phase: bare mTLS (2) against the whole chain (3)
FIXED_RATE_VARIANTS = (2, 3)
#: the variants whose members depend on the control plane (tokens, trust data, transaction tokens): its CPU
#: during their rounds is part of their server CPU (run.py explains why)
CONTROL_VARIANTS = (3, 4, 5, 7)


@dataclass(frozen=True, slots=True)
class Variant:
    number: int
    key: str
    title: str
    protocol: Literal["grpc", "http"]


VARIANTS: dict[int, Variant] = {v.number: v for v in (
    Variant(1, "grpc_insecure", "bare grpc.aio, insecure", "grpc"),
    Variant(2, "grpc_mtls", "bare grpc.aio, mTLS, no interceptors", "grpc"),
    Variant(3, "mesh_memory", "agentmesh, whole chain, memory limiter", "grpc"),
    Variant(4, "mesh_redis", "agentmesh, whole chain, Redis limiter", "grpc"),
    Variant(5, "bridge_http", "REST bridge -> agent (both hops)", "http"),
    Variant(6, "fastapi_gateway", "FastAPI + PyJWT + slowapi gateway", "http"),
    Variant(7, "bridge_http_txn_reuse", f"REST bridge, txn_reuse {BRIDGE_TXN_REUSE}", "http"),
    Variant(8, "fastapi_forwarding_gateway", "FastAPI gateway -> gRPC mTLS -> bare agent", "http"),
    Variant(9, "grpc_mtls_uvloop", "bare grpc.aio, mTLS, on uvloop", "grpc"),
)}
#: the loop the mesh's members run on (agentmesh.runtime.evloop: uvloop when installed) against bare grpc.aio
#: on that same loop: 3 / 9 is the chain's own cost, 3 / 2 what a member costs against grpc.aio as users run it
UVLOOP_VARIANT = 9


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    rounds: int  # interleaved rounds of every variant (A B C ... A B C ...)
    seconds: float  # one round of one variant (HTTP rounds are rounded to whole seconds for wrk)
    warmup: float  # per variant, before the first round
    micro_seconds: float  # per micro-benchmark
    ca_seconds: float  # certificate issuance loop
    rotate: bool  # run rotation under load
    rotate_seconds: float  # per rotation phase
    variants: tuple[int, ...]
    chart: bool
    renewal: bool = False  # run automatic renewal under load (its own mesh, >= 3 leaf lifetimes)
    renewal_seconds: float = 20.0  # of load
    propagation_trials: int = 0  # revocation propagation trials (0: not measured)
    joins: int = 0  # join cost: joins timed (0: not measured)
    join_history: int = 0  # join cost again once the join-token file holds this many tokens (0: not)
    idle_seconds: float = 0.0  # the idle mesh's CPU per process over this long (0: not measured; idlecost.py)
    fixed_rates: tuple[int, ...] = ()  # the fixed-rate (open-loop) phase: calls per second (empty: not run)
    fixed_seconds: float = 10.0  # one round of one variant at one rate
    fixed_rounds: int = 4  # interleaved rounds (every rate, both variants, in each)
    fixed_warmup: float = 1.0  # per variant, at the highest rate, before the first round


#: the fixed-rate phase's default rates (calls per second)
DEFAULT_RATES = (250, 500, 1000)

FULL = Preset("full", rounds=5, seconds=3.0, warmup=1.5, micro_seconds=0.4, ca_seconds=1.5, rotate=True,
              rotate_seconds=10.0, variants=(1, 2, 3, 4, 5, 6, 7, 8, 9), chart=True, renewal=True, renewal_seconds=20.0,
              propagation_trials=10, joins=60, join_history=1000, idle_seconds=10.0, fixed_rates=DEFAULT_RATES,
              fixed_seconds=10.0, fixed_rounds=4, fixed_warmup=2.0)
QUICK = Preset("quick", rounds=2, seconds=2.0, warmup=1.0, micro_seconds=0.1, ca_seconds=0.5, rotate=False,
               rotate_seconds=8.0, variants=(1, 2, 3, 4, 5, 6, 7, 8, 9), chart=True, propagation_trials=5, joins=50,
               idle_seconds=4.0, fixed_rates=DEFAULT_RATES, fixed_seconds=3.0, fixed_rounds=2, fixed_warmup=1.0)
SMOKE = Preset("smoke", rounds=1, seconds=0.3, warmup=0.2, micro_seconds=0.01, ca_seconds=0.05, rotate=False,
               rotate_seconds=3.0, variants=(1, 2, 3), chart=False, fixed_rates=(200,), fixed_seconds=0.3,
               fixed_rounds=1, fixed_warmup=0.2)
PRESETS = {p.name: p for p in (FULL, QUICK, SMOKE)}
