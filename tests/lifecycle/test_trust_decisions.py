"""The pure trust decisions: snapshot verification, staleness, peer verdicts, revoked members (table tests)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from support import TD, utc

from agentmesh.errors import ConfigError, PeerIdentityError, PKIError, Unavailable
from agentmesh.pki import CertificateAuthority
from agentmesh.pki.certs import dump_cert
from agentmesh.trust import (
    RevocationPolicy,
    TrustSnapshot,
    check_peer,
    revoked_members,
    staleness,
    verify_snapshot,
)

NOW = 1_800_000_000.0
POLICY = RevocationPolicy(max_staleness=120.0, failure_mode="closed")


def snap(*, serials: frozenset[int] = frozenset(), members: frozenset[str] = frozenset(), received: float = NOW,
         next_update: float = NOW + 86400) -> TrustSnapshot:
    return TrustSnapshot(serials, frozenset(), members, next_update, received)


FRESH = snap(serials=frozenset({7}), members=frozenset({"evil"}))
STALE = snap(received=NOW - 121)
EXPIRED_CRL = snap(next_update=NOW - 1)


@pytest.mark.parametrize(("snapshot", "serial", "name", "known", "mode", "outcome"), [
    # fresh data: only revocations matter
    (FRESH, 1, "a", False, "closed", None),
    (FRESH, 7, "a", True, "open", PeerIdentityError),  # revoked serial, even in open mode
    (FRESH, 1, "evil", True, "open", PeerIdentityError),  # revoked member, whatever its certificate
    # stale data
    (STALE, 1, "a", False, "open", "warn"),
    (STALE, 1, "a", True, "closed", "warn"),  # a peer accepted while fresh keeps working
    (STALE, 1, "a", False, "closed", Unavailable),  # a new peer is refused
    (STALE, 1, "a", True, "strict", Unavailable),
    # an expired CRL is never trusted as complete
    (EXPIRED_CRL, 1, "a", False, "closed", Unavailable),
    (EXPIRED_CRL, 1, "a", True, "closed", "warn"),
    # no data at all
    (None, 1, "a", False, "closed", Unavailable),
    (None, 1, "a", False, "open", "warn"),
    (None, 1, "a", False, "strict", Unavailable),
])
def test_check_peer(snapshot: TrustSnapshot | None, serial: int, name: str, known: bool, mode: str,
                    outcome: object) -> None:
    policy = RevocationPolicy(max_staleness=120.0, failure_mode=mode)  # type: ignore[arg-type]
    kw = {"serial": serial, "name": name, "spiffe_id": f"spiffe://{TD}/agent/{name}", "known": known,
          "now": NOW, "policy": policy}
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            check_peer(snapshot, **kw)  # type: ignore[arg-type]
    elif outcome == "warn":
        assert check_peer(snapshot, **kw)  # type: ignore[arg-type]
    else:
        assert check_peer(snapshot, **kw) is None  # type: ignore[arg-type]


def test_staleness_reasons() -> None:
    assert staleness(FRESH, NOW, POLICY) is None
    assert "121 s old" in (staleness(STALE, NOW, POLICY) or "")
    assert "nextUpdate" in (staleness(EXPIRED_CRL, NOW, POLICY) or "")
    assert staleness(STALE.confirmed(NOW), NOW, POLICY) is None  # a heartbeat makes it fresh again


@pytest.mark.parametrize(("kw", "message"), [
    ({"max_staleness": 0}, "max_staleness"),
    ({"failure_mode": "sometimes"}, "failure_mode"),
])
def test_policy_is_validated_once(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RevocationPolicy(**kw)  # type: ignore[arg-type]


def test_revoked_members() -> None:
    entries = [
        ("a", True, NOW + 10), ("a", False, NOW + 10),  # revoked one, holds another: not revoked as a whole
        ("b", True, NOW + 10),  # every unexpired certificate revoked
        ("c", True, NOW - 10),  # only an expired revoked certificate: not a member revocation
        ("d", False, NOW + 10),
    ]
    assert revoked_members(entries, ["e"], NOW) == {"b", "e"}


# ---------------------------------------------------------------------------------- snapshots
def parts(ca: CertificateAuthority) -> dict[str, object]:
    return {"crl_pem": ca.crl_path.read_bytes(), "issuers_pem": dump_cert(*ca.issuers()),
            "trusted_roots": x509.load_pem_x509_certificates(ca.bundle), "revoked_jtis": ["j"],
            "revoked_members": [], "now": time.time()}


def test_a_genuine_snapshot_verifies(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    serial = ca.issue("a").serial
    ca.revoke("a")
    s = verify_snapshot(**parts(ca))  # type: ignore[arg-type]
    assert serial in s.revoked_serials and s.revoked_jtis == {"j"}


def test_a_crl_from_another_ca_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    rogue = CertificateAuthority.init(tmp_path / "rogue", TD)  # same trust domain, same subject names
    forged = parts(ca) | {"crl_pem": rogue.crl_path.read_bytes(), "issuers_pem": dump_cert(*rogue.issuers())}
    with pytest.raises(PKIError, match="not signed by an issuing CA"):
        verify_snapshot(**forged)  # type: ignore[arg-type]


def test_an_expired_crl_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    p = parts(ca)
    with pytest.raises(PKIError, match="CRL expired"):
        verify_snapshot(**(p | {"now": float(p["now"]) + 8 * 86400}))  # type: ignore[arg-type, operator]


def test_a_crl_of_a_rotated_intermediate_verifies(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    old = ca.issue("a").serial
    ca.rotate()
    ca.revoke(format(old, "x"))
    assert old in verify_snapshot(**parts(ca)).revoked_serials  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- signed snapshots, anchors
def signed_update(ca: CertificateAuthority, *, signer: CertificateAuthority | None = None,
                  bundle: bytes | None = None, cross: bytes = b"", jwks: str = "{}") -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from agentmesh.v1 import control_pb2

    by = signer or ca
    content = control_pb2.TrustContent(crl_pem=by.crl_path.read_bytes(), issuers_pem=dump_cert(*by.issuers()),
                                       bundle_pem=ca.bundle if bundle is None else bundle, cross_signed_pem=cross,
                                       jwks_json=jwks, issued_at_ms=int(time.time() * 1000))
    data = content.SerializeToString()
    return control_pb2.TrustUpdate(content=data, signature=by.key.sign(data, ec.ECDSA(hashes.SHA256())),
                                   signer_pem=dump_cert(by.cert))


def roots(ca: CertificateAuthority) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(ca.bundle)


def test_a_genuine_signed_update_verifies_and_a_tampered_one_does_not(tmp_path: Path) -> None:
    from agentmesh.runtime.publisher import snapshot_of

    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    good = signed_update(ca, jwks='{"keys": []}')
    snapshot, _ = snapshot_of(good, roots(ca), time.time())
    assert snapshot.jwks_json == '{"keys": []}'
    tampered = type(good)(content=good.content.replace(b'"keys"', b'"kexs"'),
                          signature=good.signature, signer_pem=good.signer_pem)
    with pytest.raises(PKIError, match="invalid signature"):
        snapshot_of(tampered, roots(ca), time.time())


def test_a_snapshot_never_anchors_itself(tmp_path: Path) -> None:
    """A fake control plane (or a re-initialised CA) sends its own root in the bundle, signs with its own
    CA and serves its own key set: members that trust only the real root refuse all of it."""
    from agentmesh.runtime.publisher import snapshot_of

    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    rogue = CertificateAuthority.init(tmp_path / "rogue", TD)
    both = ca.bundle + rogue.bundle
    for update in (signed_update(ca, signer=rogue, bundle=both),  # rogue signer, rogue root smuggled in
                   signed_update(ca, bundle=both),  # genuine signer, but a root nobody vouches for
                   signed_update(rogue)):  # a re-initialised CA
        with pytest.raises(PKIError):
            snapshot_of(update, roots(ca), time.time())


def test_a_rolled_over_root_is_adopted_through_its_cross_certificate(tmp_path: Path) -> None:
    from agentmesh.runtime.publisher import snapshot_of

    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    old_roots = roots(ca)
    ca.rollover()  # a new root, cross-signed by the old one, joins the bundle
    update = signed_update(ca, cross=dump_cert(*ca.cross_signed()))
    snapshot, bundle = snapshot_of(update, old_roots, time.time())
    assert len(bundle) == 2 and snapshot.bundle == ca.bundle
    without_cross = signed_update(ca)
    with pytest.raises(PKIError, match="vouches"):
        snapshot_of(without_cross, old_roots, time.time())
    ca.activate_rollover()  # the new root's intermediate signs from now on
    snapshot_of(signed_update(ca, cross=dump_cert(*ca.cross_signed())), old_roots, time.time())
    snapshot_of(signed_update(ca), bundle, time.time())  # a member that adopted the bundle needs no cross
    ca.finish_rollover()  # later: the old root leaves; a member that trusts both adopts that too
    _, final = snapshot_of(signed_update(ca), bundle, time.time())
    assert len(final) == 1


def test_older_or_future_trust_data_is_refused() -> None:
    from agentmesh.trust import check_order

    held = TrustSnapshot(frozenset(), frozenset(), frozenset(), NOW + 86400, NOW, generation=5, signed_at=NOW)
    same = TrustSnapshot(frozenset(), frozenset(), frozenset(), NOW + 86400, NOW, generation=5, signed_at=NOW)
    newer = TrustSnapshot(frozenset(), frozenset(), frozenset(), NOW + 86400, NOW, generation=6, signed_at=NOW + 5)
    check_order(held, same, NOW)
    check_order(held, newer, NOW)
    check_order(None, held, NOW)
    for replay in (TrustSnapshot(frozenset(), frozenset(), frozenset(), NOW + 86400, NOW, generation=4,
                                 signed_at=NOW + 1),  # an older generation (before a revocation, say)
                   TrustSnapshot(frozenset(), frozenset(), frozenset(), NOW + 86400, NOW, generation=5,
                                 signed_at=NOW - 60)):  # signed before what the member holds
        with pytest.raises(PKIError, match="older than what this member already holds"):
            check_order(held, replay, NOW)
    future = TrustSnapshot(frozenset(), frozenset(), frozenset(), NOW + 86400, NOW, generation=6,
                           signed_at=NOW + 3600)
    with pytest.raises(PKIError, match="in the future"):
        check_order(held, future, NOW)


def test_an_issuing_ca_cannot_pose_as_a_cross_certificate(tmp_path: Path) -> None:
    """A thief of an intermediate's key self-signs a 'root' with it and offers the intermediate itself as
    the cross certificate: an issuing CA (path length 0) never vouches for a root."""
    from agentmesh.pki.certs import build_certificate, ca_profile
    from agentmesh.trust import vouched_roots

    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    now = time.time()
    fake_root = build_certificate(subject_cn=ca.cert.subject.rfc4514_string(), subject_key=ca.key,
                                  profile=ca_profile(TD, path_length=1), not_before=utc(now - 60),
                                  not_after=utc(now + 3600), issuer_cert=None, issuer_key=ca.key)
    with pytest.raises(PKIError, match="vouches"):
        vouched_roots(dump_cert(*roots(ca), fake_root), dump_cert(ca.cert), roots(ca), now)
