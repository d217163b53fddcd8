"""The pure trust decisions: snapshot verification, staleness, peer verdicts, revoked members (table tests)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509
from support import TD

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
