"""The benchmark's metrics cost (benchmarks/metricscost.py) runs on the real in-process chains and reports
each record alone and each chain with and without metrics. Nothing here asserts a speed beyond sanity."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.chainbench import run_chain_micro
from benchmarks.meshdir import create_mesh
from benchmarks.metricscost import ROUNDS


def test_the_metrics_cost_is_measured_on_both_chains(tmp_path: Path) -> None:
    chains = run_chain_micro(create_mesh(tmp_path / "mesh"), 0.02)
    cost = chains["metrics_cost"]
    assert 0 < cost["record_server_us"] < 1000 and 0 < cost["record_client_us"] < 1000
    assert cost["rounds"] == ROUNDS and cost["calls_per_round"] >= 50
    for side in ("server_chain", "client_chain"):
        c = cost[side]
        assert c["with_us"] > 0 and c["without_us"] > 0
        assert math.isclose(c["added_us"], c["with_us"] - c["without_us"])
        assert math.isclose(c["ratio"], c["with_us"] / c["without_us"])
