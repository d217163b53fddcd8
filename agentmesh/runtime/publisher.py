"""The control plane's side of trust distribution: one full snapshot of what members need (signed
CRL, issuing CAs, trust bundle, revoked token ids, revoked members, the token key set), rebuilt when
the CA directory changes and streamed to every member (``IdentityService.WatchTrust``).

Operators' commands (``cert revoke``, ``revoke-agent``, ``token revoke``, ``ca rotate``) write the CA
directory; the publisher notices within ``poll`` seconds (a few ``stat`` calls) and pushes at once, so
propagation is bounded by ``poll`` plus one network hop. Between changes every stream gets the same
snapshot as a heartbeat every ``heartbeat`` seconds, which is how members bound its staleness. The
control plane holds the CA, so it also re-signs the CRL before half its validity has passed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from agentmesh.clock import Clock
from agentmesh.errors import PKIError
from agentmesh.pki import CertificateAuthority
from agentmesh.pki.certs import dump_cert
from agentmesh.tokens import RevocationStore
from agentmesh.tokens.revocation import REVOKED_FILE
from agentmesh.trust import TrustSnapshot, revoked_members, verify_signature, verify_snapshot, vouched_roots
from agentmesh.v1 import control_pb2

__all__ = ["POLL", "TrustPublisher", "snapshot_of"]

log = logging.getLogger("agentmesh.control")
POLL = 0.25
WATCHED = ("crl.pem", REVOKED_FILE, "index.jsonl", "bundle.pem", "ca.pem")
CRL_VALIDITY = 86400.0


class TrustPublisher:
    def __init__(self, ca: CertificateAuthority, *, jwks_json: str, issuer: str, heartbeat: float = 5.0,
                 poll: float = POLL, clock: Clock = time.time) -> None:
        self.ca = ca
        self.ca_dir = ca.dir
        self.jwks_json = jwks_json
        self.issuer = issuer
        self.heartbeat = heartbeat
        self.poll = poll
        self.clock = clock
        self.tokens = RevocationStore(self.ca_dir, clock=clock)
        # unique across restarts too: a member never mistakes a restarted control plane's data for a heartbeat
        self.generation = int(clock() * 1000)
        self._stamp: tuple[tuple[int, int], ...] = ()
        self._changed = asyncio.Event()
        self._closed = False
        self._up_since = time.time()  # a rollover counts its heartbeats from when this publisher could send them
        self._signed: tuple[float, control_pb2.TrustUpdate] | None = None
        self.content = self._build()
        self.snapshot = self._verify(self.current)

    # ------------------------------------------------------------------ building
    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for name in WATCHED:
            try:
                st = os.stat(self.ca_dir / name)
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((0, 0))
        return tuple(out)

    def _build(self) -> control_pb2.TrustContent:
        ca = self.ca
        ca.refresh()  # another process may have rotated the intermediate or rolled the root over
        now = self.clock()
        crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes()) if ca.crl_path.exists() else None
        nu = crl.next_update_utc if crl is not None else None
        if nu is None or nu.timestamp() - now < CRL_VALIDITY / 2 or crl.issuer != ca.cert.subject:  # type: ignore[union-attr]
            ca.write_crl(validity=CRL_VALIDITY)  # the control plane holds the CA: keep the CRL fresh
        entries = ca.entries()
        members = revoked_members(((e.name, e.revoked_at is not None, e.not_after) for e in entries),
                                  ca.blocked(), now)
        self._stamp = self._stat()
        self.generation += 1
        self._signed = None
        return control_pb2.TrustContent(
            crl_pem=ca.crl_path.read_bytes(), issuers_pem=dump_cert(*ca.issuers()), bundle_pem=ca.bundle,
            cross_signed_pem=dump_cert(*ca.cross_signed()), revoked_jti=sorted(self.tokens.load()),
            revoked_members=sorted(members), jwks_json=self.jwks_json, issuer=self.issuer,
            generation=self.generation)

    @property
    def current(self) -> control_pb2.TrustUpdate:
        """The snapshot signed by the issuing CA, with its signing time (re-signed at most once a second)."""
        now = self.clock()
        if self._signed is None or now - self._signed[0] >= 1.0:
            content = control_pb2.TrustContent()
            content.CopyFrom(self.content)
            content.issued_at_ms = int(now * 1000)
            data = content.SerializeToString(deterministic=True)
            signature = self.ca.key.sign(data, ec.ECDSA(hashes.SHA256()))
            self._signed = (now, control_pb2.TrustUpdate(content=data, signature=signature,
                                                         signer_pem=dump_cert(self.ca.cert)))
        return self._signed[1]

    def _verify(self, msg: control_pb2.TrustUpdate) -> TrustSnapshot:
        return snapshot_of(msg, self.ca.bundle_roots(), self.clock())[0]

    def refresh(self) -> bool:
        """Rebuilds the snapshot when the CA directory changed (or the CRL needs re-signing), and lets a
        pending root rollover issue once members have had two heartbeats to receive the new root."""
        started = self.ca.rollover_started()
        if started is not None and time.time() - max(started, self._up_since) >= 2 * self.heartbeat + self.poll:
            cert = self.ca.activate_rollover()
            log.warning("control: the new root issues from now on (issuing CA %x)", cert.serial_number)
        if self._stat() == self._stamp and self.snapshot.crl_next_update - self.clock() >= CRL_VALIDITY / 2:
            return False
        self.content = self._build()
        self.snapshot = self._verify(self.current)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    # ------------------------------------------------------------------ serving
    async def run(self, on_change: Callable[[TrustSnapshot], None] | None = None) -> None:
        """Watches the CA directory until cancelled."""
        while True:
            await asyncio.sleep(self.poll)
            try:
                changed = self.refresh()
            except Exception as e:  # a half-written file: try again at the next poll
                log.warning("control: cannot rebuild the trust snapshot yet (%s)", e.__class__.__name__)
                continue
            if on_change is not None:
                on_change(self.snapshot if changed else self.snapshot.confirmed(self.clock()))

    def close(self) -> None:
        """Ends every stream (the control plane is stopping: members reconnect to its successor)."""
        self._closed = True
        self._changed.set()

    async def watch(self) -> AsyncIterator[control_pb2.TrustUpdate]:
        """The current snapshot at once, then on every change, and as a heartbeat in between."""
        while not self._closed:
            changed = self._changed
            yield self.current
            try:
                await asyncio.wait_for(changed.wait(), self.heartbeat)
            except TimeoutError:
                pass


def snapshot_of(msg: control_pb2.TrustUpdate, trusted_roots: Sequence[x509.Certificate],
                now: float) -> tuple[TrustSnapshot, list[x509.Certificate]]:
    """The verified snapshot of one ``TrustUpdate``, and the bundle it carries, for a member that trusts
    ``trusted_roots`` (raises PKIError when it cannot be trusted; see :mod:`agentmesh.trust`)."""
    try:
        content = control_pb2.TrustContent.FromString(msg.content)
    except DecodeError:
        raise PKIError("the control plane sent unreadable trust data") from None
    anchors, bundle = vouched_roots(content.bundle_pem, content.cross_signed_pem, trusted_roots, now)
    verify_signature(msg.content, msg.signature, msg.signer_pem, anchors, now)
    snapshot = verify_snapshot(crl_pem=content.crl_pem, issuers_pem=content.issuers_pem, trusted_roots=anchors,
                               revoked_jtis=content.revoked_jti, revoked_members=content.revoked_members, now=now,
                               generation=content.generation, bundle=content.bundle_pem,
                               jwks_json=content.jwks_json, issuer=content.issuer,
                               signed_at=content.issued_at_ms / 1000)
    return snapshot, bundle
