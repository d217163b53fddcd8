"""The identity lifecycle in the CA: keys born on the member (CSR), the index, the kill switch, the CRL,
the cliff at the intermediate's end, intermediate rotation and root rollover. Real certificates, a fake clock."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from support import TD

from agentmesh.clock import FakeClock
from agentmesh.errors import PKIError
from agentmesh.identity import SpiffeId
from agentmesh.pki import CertificateAuthority, MemberBlocked, make_csr, write_identity
from agentmesh.pki.certs import dump_key, new_key

YEAR = 365 * 86400
T0 = 1_800_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def ca(tmp_path: Path, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", TD, clock=clock)


def csr_for(name: str, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = key or new_key()
    return key, make_csr(key, SpiffeId.for_agent(TD, name))


def crl_of(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(ca.crl_path.read_bytes())


def crl_number(ca: CertificateAuthority) -> int:
    return crl_of(ca).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


# ---------------------------------------------------------------------------------------------- CSR issuing
def test_issue_from_a_csr_keeps_the_key_on_the_member(ca: CertificateAuthority, tmp_path: Path) -> None:
    key, csr = csr_for("alpha")
    issued = ca.issue_csr("alpha", csr, ttl=3600, dns=["alpha.mesh.svc"])
    assert issued.key is None and not issued.capped
    assert issued.cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    issued.cert.verify_directly_issued_by(ca.cert)
    san = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/agent/alpha"]
    assert san.get_values_for_type(x509.DNSName) == ["alpha", "alpha.mesh.svc"]
    assert issued.cert.not_valid_after_utc.timestamp() == T0 + 3600
    with pytest.raises(PKIError, match="issued from a CSR"):
        _ = issued.key_pem
    out = tmp_path / "alpha"
    out.mkdir()
    (out / "key.pem").write_bytes(dump_key(key))
    write_identity(issued, out)
    assert (out / "key.pem").read_bytes() == dump_key(key)  # the member's key, untouched
    assert x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())[0] == issued.cert
    entry = ca.latest("alpha")
    assert entry is not None and entry.serial == issued.serial and entry.dns == ("alpha", "alpha.mesh.svc")


def test_a_csr_for_another_member_is_refused_and_not_recorded(ca: CertificateAuthority) -> None:
    _, csr = csr_for("admin")
    with pytest.raises(PKIError, match=re.escape("asks for 'spiffe://example.org/agent/admin'")):
        ca.issue_csr("alpha", csr)
    assert ca.entries() == [] and ca.latest("alpha") is None


def test_issue_keeps_working_for_existing_callers(ca: CertificateAuthority) -> None:
    a = ca.issue("a", ttl=60, dns=["a.local"])
    assert a.key is not None and a.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    b = ca.renew("a")
    assert [e.serial for e in ca.entries()] == [a.serial, b.serial]
    latest = ca.latest("a")
    assert latest is not None and latest.serial == b.serial and latest.dns == ("a",)
    assert ca.latest("zed") is None


# ---------------------------------------------------------------------------------------------- index
def test_revocation_records_reason_and_who(ca: CertificateAuthority, clock: FakeClock) -> None:
    a, b = ca.issue("a"), ca.issue("b")
    clock.advance(5)
    ca.revoke("a", reason="key leaked", by="ops")
    by_serial = {e.serial: e for e in ca.entries()}
    assert by_serial[a.serial].reason == "key leaked" and by_serial[a.serial].revoked_by == "ops"
    assert by_serial[a.serial].revoked_at == T0 + 5
    assert by_serial[b.serial].reason is None and by_serial[b.serial].revoked_at is None
    ca.revoke(format(b.serial, "x"))
    assert ca.entries()[1].reason == ""
    for bad in ("two\nlines", "tab\there", "x" * 201):
        ca.issue("c")
        with pytest.raises(PKIError, match="one line of printable text"):
            ca.revoke("c", reason=bad)


def test_the_index_is_made_private_again(ca: CertificateAuthority) -> None:
    index = ca.dir / "index.jsonl"
    index.chmod(0o644)
    ca.issue("a")
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    index.chmod(0o644)
    ca.block("a")
    assert stat.S_IMODE(index.stat().st_mode) == 0o600


def test_a_damaged_index_is_one_clear_line(ca: CertificateAuthority) -> None:
    ca.issue("a")
    with open(ca.dir / "index.jsonl", "a") as f:
        f.write('{"op": "revoke", "serial": \n')
    with pytest.raises(PKIError, match=r"index .* is damaged"):
        CertificateAuthority.load(ca.dir).entries()


def test_a_ca_made_before_the_lifecycle_loads(ca: CertificateAuthority) -> None:
    """Old index lines (no dns, no reason), no issuers/ or roots/: everything still reads."""
    (ca.dir / "index.jsonl").write_text(
        '{"name": "a", "not_after": 1800086400.0, "op": "issue", "serial": "ab", "spiffe_id": "spiffe://example.org/agent/a"}\n'
        '{"at": 1800000010.0, "op": "revoke", "serial": "ab"}\n')
    old = CertificateAuthority.load(ca.dir, clock=ca.clock)
    [entry] = old.entries()
    assert entry.dns == () and entry.reason == "" and entry.revoked_at == 1800000010.0
    assert old.issuers() == (old.cert,) and old.blocked() == {}
    assert old.bundle == (ca.dir / "bundle.pem").read_bytes()
    old.issue("a")


# ---------------------------------------------------------------------------------------------- kill switch
def test_kill_switch(ca: CertificateAuthority, clock: FakeClock) -> None:
    ca.issue("a")
    _, csr = csr_for("a")
    entry = ca.block("a", reason="compromised", by="alice")
    assert ca.blocked() == {"a": entry}
    assert (entry.name, entry.reason, entry.by, entry.at) == ("a", "compromised", "alice", T0)
    message = "agent a is revoked (compromised); reinstate it with: agentmesh reinstate a --config FILE"
    for attempt in (lambda: ca.issue("a"), lambda: ca.issue_csr("a", csr), lambda: ca.renew("a"),
                    lambda: ca.issue("a", record=False)):
        with pytest.raises(MemberBlocked) as err:
            attempt()
        assert err.value.message == message and err.value.name == "a" and err.value.reason == "compromised"
    assert len(ca.entries()) == 1
    assert CertificateAuthority.load(ca.dir).blocked() == {"a": entry}  # derived from the index
    ca.issue("b")  # others are not affected
    clock.advance(1)
    assert ca.unblock("a", by="bob") is True
    assert ca.blocked() == {} and ca.unblock("a") is False
    ca.issue_csr("a", csr)
    with pytest.raises(MemberBlocked, match=r"\(no reason given\)"):
        ca.block("a")
        ca.renew("a")


# ---------------------------------------------------------------------------------------------- CRL
def test_crl_validity_and_a_number_that_only_grows(ca: CertificateAuthority, clock: FakeClock) -> None:
    assert crl_of(ca).next_update_utc.timestamp() == T0 + 86400  # the default: one day
    first = crl_number(ca)
    ca.write_crl(validity=3600)
    assert crl_of(ca).next_update_utc.timestamp() == T0 + 3600
    assert crl_number(ca) > first
    clock.advance(-600)  # the clock steps back
    second = crl_number(ca)
    ca.write_crl()
    assert crl_number(ca) == second + 1
    with pytest.raises(PKIError, match="validity must be positive"):
        ca.write_crl(validity=0)


# ---------------------------------------------------------------------------------------------- the cliff
def test_an_expired_intermediate_refuses_to_issue_and_says_how_to_rotate(ca: CertificateAuthority,
                                                                          clock: FakeClock) -> None:
    _, csr = csr_for("a")
    clock.advance(YEAR + 1)
    expected = f"expired on {ca.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z; " \
               f"rotate it with: agentmesh ca rotate --ca {ca.dir}"
    for attempt in (lambda: ca.issue("a"), lambda: ca.issue_csr("a", csr)):
        with pytest.raises(PKIError) as err:
            attempt()
        assert expected in err.value.message
    clock.now = T0 - 3600  # before the intermediate's start
    with pytest.raises(PKIError, match="issuing CA is not valid until"):
        ca.issue("a")
    assert ca.entries() == []


def test_a_leaf_capped_by_the_intermediate_is_flagged(ca: CertificateAuthority, clock: FakeClock) -> None:
    end = ca.cert.not_valid_after_utc.timestamp()
    clock.now = end - 3600
    issued = ca.issue("a", ttl=86400)
    assert issued.capped and issued.cert.not_valid_after_utc.timestamp() == end
    assert ca.issue_csr("a", csr_for("a")[1], ttl=86400).capped
    assert not ca.issue("a", ttl=600).capped


def test_needs_rotation_once_a_third_is_left(ca: CertificateAuthority, clock: FakeClock) -> None:
    assert not ca.needs_rotation()
    lifetime = YEAR + 60  # backdated a minute
    start = ca.cert.not_valid_before_utc.timestamp()
    assert not ca.needs_rotation(start + lifetime * 2 / 3 - 1)
    assert ca.needs_rotation(start + lifetime * 2 / 3 + 1)
    clock.advance(300 * 86400)
    assert ca.needs_rotation()
    ca.rotate()
    assert not ca.needs_rotation()


# ---------------------------------------------------------------------------------------------- rotation
def test_rotate_keeps_the_root_archives_the_old_intermediate_and_resigns_the_crl(
        ca: CertificateAuthority, clock: FakeClock) -> None:
    old, old_key_pem = ca.cert, (ca.dir / "ca-key.pem").read_bytes()
    live, gone = ca.issue("a"), ca.issue("b", ttl=300 * 86400)  # still valid after the 200 days below
    ca.revoke("b", reason="left")
    clock.advance(200 * 86400)
    new = ca.rotate()
    assert ca.cert == new and new.serial_number != old.serial_number
    assert new.public_key() != old.public_key()
    new.verify_directly_issued_by(ca.root)
    assert new.not_valid_after_utc.timestamp() == clock.now + YEAR
    assert x509.load_pem_x509_certificate((ca.dir / "issuers" / f"{old.serial_number:x}.pem").read_bytes()) == old
    for path in ca.dir.rglob("*"):
        assert path.is_dir() or old_key_pem not in path.read_bytes(), path  # the old key is gone
    assert stat.S_IMODE((ca.dir / "ca-key.pem").stat().st_mode) == 0o600
    reloaded = CertificateAuthority.load(ca.dir, clock=clock)
    assert reloaded.cert == new and reloaded.root == ca.root
    crl = crl_of(ca)
    assert crl.is_signature_valid(new.public_key())  # type: ignore[arg-type]
    assert {r.serial_number for r in crl} == {gone.serial}
    assert ca.issuers() == (new, old)
    assert crl.is_signature_valid(new.public_key())  # type: ignore[arg-type]
    assert not crl.is_signature_valid(old.public_key())  # type: ignore[arg-type]  # the retired key signs nothing
    fresh = ca.issue("c")
    fresh.cert.verify_directly_issued_by(new)
    assert fresh.chain == (new,)
    live.cert.verify_directly_issued_by(ca.issuers()[1])  # leaves of the old intermediate still check out
    clock.advance(200 * 86400)  # the old intermediate expired: no longer offered
    assert ca.issuers() == (new,)


def test_rotate_is_the_way_out_of_the_cliff(ca: CertificateAuthority, clock: FakeClock) -> None:
    clock.advance(YEAR + 10)
    with pytest.raises(PKIError, match="agentmesh ca rotate"):
        ca.issue("a")
    ca.rotate(ttl=30 * 86400)
    assert ca.cert.not_valid_after_utc.timestamp() == clock.now + 30 * 86400
    assert not ca.issue("a").capped


def test_another_process_rotation_is_picked_up(ca: CertificateAuthority, clock: FakeClock) -> None:
    control = CertificateAuthority.load(ca.dir, clock=clock)
    operator = CertificateAuthority.load(ca.dir, clock=clock)
    new = operator.rotate()
    assert control.issue("a").chain == (new,)
    control.write_crl()
    assert crl_of(control).is_signature_valid(new.public_key())  # type: ignore[arg-type]
    assert control.refresh() is False
    operator.rotate()
    assert control.refresh() is True and control.cert == operator.cert


def test_rotate_refuses_when_the_root_expired(ca: CertificateAuthority, clock: FakeClock) -> None:
    clock.advance(11 * YEAR)
    with pytest.raises(PKIError, match=r"root CA expired on .*agentmesh ca rollover --ca"):
        ca.rotate()


# ---------------------------------------------------------------------------------------------- root rollover
def test_root_rollover_trusts_both_roots_until_finished(ca: CertificateAuthority, tmp_path: Path) -> None:
    old_root, old_inter = ca.root, ca.cert
    before = ca.issue("a")
    new_root = ca.rollover()
    # step 1: members trust both roots; the old one still issues (peers may not have the new one yet)
    assert ca.root == old_root and ca.cert == old_inter and ca.rollover_started() is not None
    assert ca.issue("early").chain[0] == old_inter
    cross = ca.cross_signed()
    assert len(cross) == 1 and cross[0].public_key() == new_root.public_key()
    cross[0].verify_directly_issued_by(old_root)  # the old root vouches for the new one
    with pytest.raises(PKIError, match="does not issue yet"):
        ca.finish_rollover()
    # step 2: the new root issues
    ca.activate_rollover()
    assert ca.root == new_root and new_root.serial_number != old_root.serial_number
    assert ca.rollover_started() is None
    new_root.verify_directly_issued_by(new_root)
    ca.cert.verify_directly_issued_by(new_root)
    assert ca.bundle_roots() == (old_root, new_root)
    assert (ca.dir / "bundle.pem").read_bytes() == ca.bundle
    assert x509.load_pem_x509_certificate((ca.dir / "roots" / f"{old_root.serial_number:x}.pem").read_bytes()) \
        == old_root
    assert old_inter in ca.issuers()
    assert stat.S_IMODE((ca.dir / "root-key.pem").stat().st_mode) == 0o600
    issued = ca.issue("b")
    assert issued.bundle == ca.bundle
    write_identity(issued, tmp_path / "b")
    assert x509.load_pem_x509_certificates((tmp_path / "b" / "bundle.pem").read_bytes()) == [old_root, new_root]
    reloaded = CertificateAuthority.load(ca.dir)
    assert reloaded.bundle == ca.bundle and reloaded.root == new_root
    assert crl_of(ca).is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    before.cert.verify_directly_issued_by(old_inter)
    with pytest.raises(PKIError, match=r"already under way.*--finish"):
        ca.rollover()
    # dropping the old root while certificates under it are valid would cut their holders off
    with pytest.raises(PKIError, match=r"2 certificate\(s\) issued under the old root are still valid"):
        ca.finish_rollover()
    ca.revoke("a")
    ca.revoke("early")
    assert ca.finish_rollover() == (old_root,)
    assert (ca.dir / "bundle.pem").read_bytes() == ca.bundle == (ca.dir / "root.pem").read_bytes()
    assert ca.finish_rollover() == ()
    assert CertificateAuthority.load(ca.dir, clock=ca.clock).issue("c").bundle == ca.bundle
    ca.rotate()  # the new root signs intermediates
    ca.cert.verify_directly_issued_by(new_root)


@pytest.mark.parametrize("dns", ["control", "bridge", "beta", "Control"])
def test_a_certificate_never_carries_another_members_name(ca: CertificateAuthority, dns: str) -> None:
    """Members are dialled by name (the DNS SAN a client checks): a single-label extra name could be another
    member's, the control plane's included, so the CA refuses it for issue, join and (through both) renewal."""
    from agentmesh.errors import ConfigError
    from agentmesh.pki.join import JoinTokens

    with pytest.raises(ConfigError, match="could be another member's name"):
        ca.issue("alpha", dns=[dns])
    with pytest.raises(ConfigError, match="could be another member's name"):
        JoinTokens(ca.dir).create("alpha", dns=[dns])


def test_dotted_names_and_localhost_are_fine_and_localhost_is_no_member(ca: CertificateAuthority) -> None:
    from agentmesh.errors import ConfigError
    from agentmesh.identity import validate_agent_name

    issued = ca.issue("alpha", dns=["localhost", "alpha.mesh.svc"])
    sans = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"alpha", "localhost", "alpha.mesh.svc"}
    with pytest.raises(ConfigError, match="reserved"):
        validate_agent_name("localhost")
