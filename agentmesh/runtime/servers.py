"""The certificates the other members' servers present: which addresses are refused, and what a channel dials.

gRPC's Python client cannot see the certificate a server presents, so :class:`PresentedCertificates`
reads it with a handshake of its own (:func:`agentmesh.runtime.probe.served_certificate`) at each address
of the members this one has a connection to: when a connection is made, when the trust data changes and
every ``tokens.revocation_refresh``. An address whose server presents a revoked certificate is left out
of what a channel dials (:func:`dial_target`) until it presents a valid one, and the connection to that
member is dropped (rebuilt without it at the next call); a member all of whose addresses are refused is
UNAVAILABLE. A server this member cannot reach is left to the gRPC call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from agentmesh.config import MeshConfig
from agentmesh.errors import Unavailable
from agentmesh.runtime.channel import MeshChannels
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.probe import served_certificate
from agentmesh.runtime.truststate import TrustState

__all__ = ["PresentedCertificates", "dial_target"]

log = logging.getLogger("agentmesh.node")


def dial_target(config: MeshConfig, name: str, refused: Collection[str] = ()) -> str:
    """The gRPC target of agent ``name``: its address, or ``ipv4:a,b`` for its replicas, without the
    ``refused`` addresses; raises :class:`Unavailable` when every one is refused."""
    agent = config.agent(name)
    if not agent.replicas and not refused:  # (asked on every call: the common case first)
        return agent.address
    addresses = [a for a in (agent.address, *agent.replicas) if a not in refused]
    if not addresses:
        raise Unavailable(f"agent {name} presents a revoked certificate; calls to it are refused")
    if not agent.replicas:
        return agent.address
    return "ipv4:" + ",".join(addresses)


class PresentedCertificates:
    """The addresses (of members ``owner`` dials) whose server presents a revoked certificate."""

    def __init__(self, config: MeshConfig, owner: str, identity: AgentIdentity, trust: TrustState) -> None:
        self.config = config
        self.owner = owner
        self.identity = identity
        self.trust = trust
        self.revoked: dict[str, int] = {}  # address -> the revoked serial a server there presented

    def addresses(self, name: str) -> tuple[str, ...]:
        agent = self.config.agent(name)
        return (agent.address, *agent.replicas)

    def target(self, name: str) -> str:
        """What a channel to agent ``name`` dials now (see :func:`dial_target`)."""
        return dial_target(self.config, name, self.revoked)

    async def check(self, channels: MeshChannels) -> None:
        """Probes every address of the members ``channels`` has a connection to (and of those refused
        before, to let them back), all at once: one slow address delays no other."""
        snapshot = self.trust.snapshot
        if snapshot is None:
            return
        names = {*channels.names(), *(n for n in self.config.agents
                                      if any(a in self.revoked for a in self.addresses(n)))}
        targets = [(name, address) for name in names for address in self.addresses(name)]

        async def probe(name: str, address: str) -> None:
            try:
                cert = await asyncio.to_thread(served_certificate, address, name, self.identity.dir)
            except Unavailable:
                return
            revoked = cert.serial_number in snapshot.revoked_serials
            if revoked and address not in self.revoked:
                self.revoked[address] = cert.serial_number
                log.warning("%s: %s at %s presents revoked certificate %x; its calls are refused", self.owner,
                            name, address, cert.serial_number)
            elif not revoked and address in self.revoked:
                del self.revoked[address]
            else:
                return
            channels.drop(name)  # rebuilt without the refused address at the next call

        await asyncio.gather(*(probe(name, address) for name, address in targets))
