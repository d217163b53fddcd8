"""Automatic certificate renewal: every member renews at about half its certificate's lifetime.

The key is born here and never leaves the process: a fresh key, a CSR naming the member's own SPIFFE
ID, ``sign(csr)`` (the control plane's ``Renew`` over the member's current mTLS connection, or the CA
itself for the control plane), then the new files are installed atomically and the identity reloaded
(the server presents the new certificate on new handshakes, channels and the bound token follow).
When signing fails the member keeps serving with what it has, retries with jittered backoff, and
warns once when less than a quarter of the lifetime is left.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agentmesh.clock import Clock
from agentmesh.errors import MeshError
from agentmesh.identity import SpiffeId
from agentmesh.pki.certs import dump_key, new_key
from agentmesh.pki.csr import make_csr
from agentmesh.pki.rollover import BACKDATE
from agentmesh.runtime.credentials import AgentIdentity, install_identity

__all__ = ["Renewer", "SignedIdentity", "backoff", "renewal_due"]

log = logging.getLogger("agentmesh.renewal")


@dataclass(frozen=True, slots=True)
class SignedIdentity:
    cert_chain: bytes  # leaf + intermediate, PEM
    bundle: bytes  # trust bundle, PEM


Sign = Callable[[bytes], Awaitable[SignedIdentity]]


def renewal_due(start: float, not_after: float, *, fraction: float = 0.5, jitter: float = 0.1,
                rand: float = 0.5) -> float:
    """When to renew a certificate issued at ``start``: at ``fraction`` of its life, moved by up to
    ±``jitter`` of that life (``rand`` in [0, 1)) so members issued together do not renew together. A
    member restarted with a certificate past that point renews at once."""
    life = max(0.0, not_after - start)
    return start + life * (fraction + jitter * (2 * rand - 1))


def backoff(attempt: int, *, base: float = 0.2, cap: float = 5.0, rand: float = 0.5) -> float:
    """Exponential backoff with full jitter: a delay in [0, min(cap, base * 2**attempt)]."""
    return float(min(cap, base * (2 ** min(attempt, 30)))) * rand


class Renewer:
    """Keeps one identity fresh; ``run()`` until cancelled, or ``renew()`` once."""

    def __init__(self, identity: AgentIdentity, sign: Sign, *, owner: str, clock: Clock = time.time,
                 rng: random.Random | None = None, on_renewed: Callable[[], Awaitable[None]] | None = None) -> None:
        self.identity = identity
        self.sign = sign
        self.owner = owner
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self.on_renewed = on_renewed
        self.renewals = 0

    async def renew(self) -> None:
        key = new_key()
        csr = make_csr(key, SpiffeId.parse(self.identity.spiffe_id.uri))
        signed = await self.sign(csr)
        await asyncio.to_thread(install_identity, self.identity.dir, cert_chain=signed.cert_chain,
                                key=dump_key(key), bundle=signed.bundle)
        self.identity.reload()
        self.renewals += 1
        leaf = self.identity.files.leaf
        log.info("%s: certificate renewed (serial %x, valid until %s)", self.owner, leaf.serial_number,
                 leaf.not_valid_after_utc.isoformat(timespec="seconds"))
        if self.on_renewed is not None:
            await self.on_renewed()

    async def run(self) -> None:
        attempt = 0
        warned = False
        while True:
            leaf = self.identity.files.leaf
            not_after = leaf.not_valid_after_utc.timestamp()
            # when it was issued: the mini CA backdates notBefore by BACKDATE against clock skew
            start = min(leaf.not_valid_before_utc.timestamp() + BACKDATE, not_after)
            due = renewal_due(start, not_after, rand=self.rng.random())
            if attempt == 0:
                await asyncio.sleep(max(0.0, due - self.clock()))
            try:
                await self.renew()
                attempt, warned = 0, False
                continue
            except (MeshError, OSError) as e:
                reason = e.message if isinstance(e, MeshError) else e.__class__.__name__
            left = not_after - self.clock()
            if not warned and left < (not_after - start) / 4:  # under a quarter of its lifetime left
                warned = True
                log.warning("%s: cannot renew its certificate (%s); %.0f s of validity left", self.owner, reason,
                            max(0.0, left))
            else:
                log.debug("%s: renewal failed (%s); retrying", self.owner, reason)
            attempt += 1
            await asyncio.sleep(backoff(attempt, base=0.5, cap=min(30.0, max(1.0, left / 8)), rand=self.rng.random()))
