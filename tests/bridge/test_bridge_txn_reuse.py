"""One transaction per HTTP request by default; with ``bridge.txn_reuse`` a client's requests to one route share
one for that long (fewer round trips to the control plane), never across clients, routes or addresses."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from bridgekit import running_bridge
from conftest import AGENTS, SECTIONS

from agentmesh.bridge.transactions import MARGIN, Transactions
from agentmesh.clock import FakeClock

ECHO = "/v1/agents/alpha/bridgetest.v1.Probe/Echo"
NOW = 1_700_000_000.0


class Control:
    """Counts exchanges; each answers a new transaction living ``ttl`` seconds."""

    def __init__(self, clock: FakeClock, ttl: float = 300.0) -> None:
        self.clock, self.ttl, self.calls = clock, ttl, []  # type: ignore[var-annotated]

    async def __call__(self, token: str, route: str, context: dict[str, str]) -> Any:
        self.calls.append((token, route, context))
        return SimpleNamespace(txn=f"t{len(self.calls)}", token=f"txn-{len(self.calls)}",
                               expires_at=self.clock() + self.ttl)


async def test_one_transaction_per_request_by_default() -> None:
    clock = FakeClock(NOW)
    control = Control(clock)
    txns = Transactions(control, clock=clock)
    a = await txns.token("client", route="alpha /m", request_id="r1", client_ip="192.0.2.1")
    b = await txns.token("client", route="alpha /m", request_id="r2", client_ip="192.0.2.1")
    assert a.txn != b.txn and len(control.calls) == 2
    assert control.calls[0][2] == {"request_id": "r1", "req_ip": "192.0.2.1"}


@pytest.mark.parametrize(("later", "token", "route", "ip", "shared"), [
    pytest.param(0.0, "client", "alpha /m", "192.0.2.1", True, id="the same request again: shared"),
    pytest.param(29.0, "client", "alpha /m", "192.0.2.1", True, id="within the window: shared"),
    pytest.param(30.0, "client", "alpha /m", "192.0.2.1", False, id="past the window: a new one"),
    pytest.param(1.0, "another client", "alpha /m", "192.0.2.1", False, id="another client token"),
    pytest.param(1.0, "client", "alpha /other", "192.0.2.1", False, id="another route"),
    pytest.param(1.0, "client", "alpha /m", "192.0.2.9", False, id="another address"),
])
async def test_reuse_is_per_client_token_route_and_address(later: float, token: str, route: str, ip: str,
                                                           shared: bool) -> None:
    clock = FakeClock(NOW)
    control = Control(clock)
    txns = Transactions(control, reuse=30.0, clock=clock)
    first = await txns.token("client", route="alpha /m", request_id="r1", client_ip="192.0.2.1")
    clock.advance(later)
    second = await txns.token(token, route=route, request_id="r2", client_ip=ip)
    assert (second.txn == first.txn) is shared
    assert all("request_id" not in context for _, _, context in control.calls)  # it would be the first one's


async def test_a_reused_transaction_token_always_has_time_left() -> None:
    clock = FakeClock(NOW)
    control = Control(clock, ttl=MARGIN + 5)
    txns = Transactions(control, reuse=300.0, clock=clock)
    first = await txns.token("client", route="r", request_id="r1", client_ip=None)
    clock.advance(4)
    assert (await txns.token("client", route="r", request_id="r2", client_ip=None)).txn == first.txn
    clock.advance(2)  # fewer than MARGIN seconds left: a fresh one
    assert (await txns.token("client", route="r", request_id="r3", client_ip=None)).txn != first.txn


def _txns(root: Path, principal: str) -> list[str]:
    lines = (root / "audit.jsonl").read_text().splitlines()
    spans = [json.loads(line) for line in lines if line.strip()]
    return [s["attributes"]["agentmesh.txn"] for s in spans
            if s["kind"] == "server" and s["attributes"].get("agentmesh.agent") == "alpha"
            and s["attributes"].get("enduser.id") == principal and "agentmesh.txn" in s["attributes"]]


@pytest.mark.parametrize(("reuse", "distinct"), [pytest.param(None, 3, id="default: one per request"),
                                                 pytest.param("30s", 1, id="txn_reuse 30s: one for all three")])
async def test_through_the_real_bridge(tmp_path: Path, reuse: str | None, distinct: int) -> None:
    bridge = {**SECTIONS["bridge"], **({"txn_reuse": reuse} if reuse else {})}
    async with running_bridge(tmp_path, AGENTS, serve=["alpha"], **{**SECTIONS, "bridge": bridge}) as mesh:
        auth = mesh.auth("reuser@example.org")
        for i in range(3):
            r = await mesh.client.post(ECHO, json={"name": str(i)}, headers=auth)
            assert r.status_code == 200, r.text
        r = await mesh.client.post(ECHO, json={"name": "other"}, headers=mesh.auth("other@example.org"))
        assert r.status_code == 200, r.text
        for node in mesh.nodes.values():
            node.sink.force_flush(5)
        seen = _txns(tmp_path, "reuser@example.org")
        assert len(seen) == 3 and len(set(seen)) == distinct
        assert not set(seen) & set(_txns(tmp_path, "other@example.org"))  # never shared across clients
