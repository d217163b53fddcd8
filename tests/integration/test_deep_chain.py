"""A delegated call as deep as the config allows (8 hops, each link carrying its signer's certificate) fits in
what members accept as metadata; one hop more is refused before any signature is checked."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from meshkit import running_mesh
from support import TD

from agentmesh.errors import ConfigError
from agentmesh.interceptors.client import delegating
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

HOPS = [f"hop{i}" for i in range(1, 9)]


async def test_eight_hops_pass_and_every_hop_sees_the_whole_chain(tmp_path: Path) -> None:
    policy = [{"name": "entry", "action": "allow", "to": ["hop1"], "roles": ["client"], "via": ["bridge"]},
              {"name": "onward", "action": "allow", "roles": ["client"], "chain": ["bridge", "**"]}]
    agents = {name: {"roles": ["worker"]} for name in HOPS}
    async with running_mesh(tmp_path, agents, policy=policy, tokens={"max_delegation_depth": 8}) as mesh:
        stub = mesh.nodes["bridge"].stub("hop1", agent_pb2_grpc.AgentStub)
        for _ in range(3):
            with delegating(await mesh.txn(mesh.client_token())):
                res = await stub.Invoke(agent_pb2.Task(id="deep", metadata={"next": ",".join(HOPS[1:])}))
            assert len(res.output) == 8
            last = res.output[-1].text
            chain = ",".join(f"spiffe://{TD}/agent/{n}" for n in ["bridge", *HOPS[:-1]])
            assert last.startswith("hop8:") and last.endswith(f"chain={chain}")
        # one more hop than the limit: refused by the ninth member (the ninth link is never parsed)
        with delegating(await mesh.txn(mesh.client_token())), pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Invoke(agent_pb2.Task(id="deeper", metadata={"next": ",".join([*HOPS[1:], "hop1"])}))
        assert err.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAUTHENTICATED)


def test_a_depth_over_eight_is_a_config_error(tmp_path: Path) -> None:
    from agentmesh.configfile import parse_config
    with pytest.raises(ConfigError, match=r"tokens\.max_delegation_depth: expected an integer from 1 to 8"):
        parse_config({"trust_domain": TD, "agents": {"a": {"address": "127.0.0.1:7000"}},
                      "tokens": {"max_delegation_depth": 9}}, tmp_path)
