"""Hop links: one signed statement per hop of a delegated call, chained like a hash list.

Each member that forwards a delegated call signs a link with its own certificate key (the key of its
X.509 SVID, the one its mTLS handshake proves)::

    header  {"alg": "ES256", "typ": "txn-link+jwt", "x5c": [<the signer's leaf>, <its issuing CA>] (DER, base64)}
    claims  {"iss": <signer SPIFFE ID>, "aud": <SPIFFE ID of the member it calls>,
             "tth": <hash of the transaction token>, "ph": <hash of the previous link> (absent on the first),
             "iat", "exp" (short), "jti"}

The design follows the WIMSE Workload Proof Token (draft-ietf-wimse-s2s-protocol): ``tth`` is its
transaction-token hash and ``aud`` its audience; instead of a Workload Identity Token (``wth``) the
signer is named by its X.509 SVID, the way WIMSE's mTLS profile names workloads, so no second
credential exists; ``ph`` binds each link to the one before it, which a WPT (one hop) does not need.
The certificate travels in ``x5c`` (unlike in a bearer token, where a key chosen by the token is never
trusted): it is only accepted when it chains to an issuing CA of the mesh (:func:`agentmesh.trust.check_certificate`)
and its key verifies the signature; the members it names are then checked for revocation per call.

Why a hand-written JWS and not pyjwt's ``decode``: the same strict parser as every other mesh token
(:mod:`agentmesh.tokens.jws`: sizes first, duplicate members and NaN refused) and a certificate key
that pyjwt would take from the header unverified. Signatures are still made and checked by pyjwt's
algorithm objects (:mod:`agentmesh.tokens.crypto`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from agentmesh.errors import DelegationError, MeshError, TokenError
from agentmesh.identity import PeerIdentity
from agentmesh.tokens import crypto
from agentmesh.tokens.cache import LRUCache
from agentmesh.tokens.jws import parse_compact
from agentmesh.tokens.txn import token_hash

__all__ = ["LINK_TYP", "MAX_LINK_BYTES", "HopSigner", "Link", "LinkVerifier", "link_hashes", "sign_link"]

LINK_TYP = "txn-link+jwt"
MAX_LINK_BYTES = 4096
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "crit", "zip", "kid")


@dataclass(frozen=True, slots=True)
class Link:
    """A link whose signature was verified with the key of ``signer``'s mesh certificate."""

    signer: str  # SPIFFE ID, from the certificate (the claim must agree)
    name: str | None  # the signer's member name
    serial: int
    thumbprint: str  # x5t#S256 of the signer's certificate
    cert_not_after: float
    aud: str
    tth: str
    ph: str | None
    iat: float
    exp: float
    hash: str  # token_hash of the raw link: what the next link's ``ph`` must be


_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384"}  # the curves the mesh CA issues leaves for


def _algorithm(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGS:
        return _EC_ALGS[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise DelegationError("link-format", "a hop link needs a P-256, P-384 or Ed25519 certificate key")


def _segment(obj: object) -> str:
    return crypto.b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


def sign_link(key: crypto.SigningKey, cert_der: bytes, *, signer: str, aud: str, tth: str, ph: str | None,
              now: float, ttl: float, issuer_der: bytes | None = None) -> str:
    """A link from ``signer`` (whose certificate is ``cert_der`` and private key ``key``) to ``aud``; with
    ``issuer_der``, the issuing CA's certificate travels too (x5c), for members that do not know it yet."""
    alg = _algorithm(key)
    x5c = [base64.b64encode(der).decode("ascii") for der in (cert_der, issuer_der) if der is not None]
    header = {"alg": alg, "typ": LINK_TYP, "x5c": x5c}
    claims: dict[str, object] = {"iss": signer, "aud": aud, "tth": tth, "iat": int(now),
                                 "exp": int(now + ttl), "jti": secrets.token_hex(8)}
    if ph is not None:
        claims["ph"] = ph
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    return f"{signing_input}.{crypto.b64url_encode(crypto.sign(alg, key, signing_input.encode('ascii')))}"


#: (the signer's certificate, the certificates presented with it) -> its identity, or a MeshError
CertificateCheck = Callable[[x509.Certificate, tuple[x509.Certificate, ...]], PeerIdentity]


class LinkVerifier:
    """Checks one link's signature and certificate; results are cached by the link's hash (a link is
    immutable, so only its expiry and its signer's revocation, checked per call elsewhere, can change)."""

    def __init__(self, check_certificate: CertificateCheck, *, cache_size: int = 10000) -> None:
        self.check_certificate = check_certificate
        self._cache: LRUCache[Link] = LRUCache(cache_size)
        self._certs: LRUCache[tuple[PeerIdentity, object]] = LRUCache(1024)
        self._issuers: tuple[x509.Certificate, ...] = ()

    def clear_cache(self) -> None:
        self._cache.clear()
        self._certs.clear()

    def follow(self, issuers: Sequence[x509.Certificate]) -> None:
        """Forgets what was verified under other issuing CAs once the trust data names new ones (a
        rotation or rollover finished, an issuer dropped): a cached certificate is no proof past that."""
        if tuple(issuers) != self._issuers:
            self._issuers = tuple(issuers)
            self.clear_cache()

    def verify(self, link: str) -> Link:
        if not isinstance(link, str) or not link or len(link) > MAX_LINK_BYTES or not link.isascii():
            raise DelegationError("link-format", "hop link missing, too large or malformed")
        digest = hashlib.sha256(link.encode("ascii")).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            return hit
        verified = self._verify(link)
        self._cache.put(digest, verified)
        return verified

    def _verify(self, link: str) -> Link:
        try:
            parsed = parse_compact(link, MAX_LINK_BYTES)
        except TokenError:
            raise DelegationError("link-format", "hop link is malformed") from None
        header, claims = parsed.header, parsed.claims
        if header.get("typ") != LINK_TYP or any(h in header for h in _FORBIDDEN_HEADERS):
            raise DelegationError("link-format", "hop link header is not a mesh link's")
        x5c = header.get("x5c")
        if not isinstance(x5c, list) or not 1 <= len(x5c) <= 2 or not all(isinstance(c, str) for c in x5c):
            raise DelegationError("link-format", "hop link must carry its signer's certificate (and at most its "
                                                 "issuer's)")
        identity, public = self._certificate(tuple(x5c))
        alg = header.get("alg")
        if alg != _algorithm(public):
            raise DelegationError("link-signature", "hop link algorithm does not match its signer's key")
        if not crypto.verify_signature(alg, public, parsed.signing_input, parsed.signature):
            raise DelegationError("link-signature", f"hop link of {identity.uri} has an invalid signature")
        iss, aud, tth, ph = claims.get("iss"), claims.get("aud"), claims.get("tth"), claims.get("ph")
        iat, exp, jti = claims.get("iat"), claims.get("exp"), claims.get("jti")
        if iss != identity.uri:
            raise DelegationError("link-signer", f"hop link names {iss!s:.80} but is signed by {identity.uri}")
        if not (isinstance(aud, str) and isinstance(tth, str) and (ph is None or isinstance(ph, str))
                and _number(iat) and _number(exp) and isinstance(jti, str) and 0 < len(jti) <= 64):
            raise DelegationError("link-format", "hop link claims are missing or invalid")
        assert isinstance(iat, int | float) and isinstance(exp, int | float)
        return Link(signer=identity.uri, name=identity.name, serial=identity.serial, thumbprint=identity.thumbprint,
                    cert_not_after=identity.not_after, aud=aud, tth=tth, ph=ph, iat=float(iat), exp=float(exp),
                    hash=token_hash(link))

    def _certificate(self, x5c: tuple[str, ...]) -> tuple[PeerIdentity, object]:
        digest = hashlib.sha256(",".join(x5c).encode("ascii")).digest()
        hit = self._certs.get(digest)
        if hit is not None:
            return hit
        try:
            cert, *presented = (x509.load_der_x509_certificate(base64.b64decode(b64, validate=True)) for b64 in x5c)
        except (ValueError, binascii.Error):
            raise DelegationError("link-certificate", "hop link certificate is unreadable") from None
        try:
            identity = self.check_certificate(cert, tuple(presented))
        except MeshError as e:
            raise DelegationError("link-certificate", f"hop link certificate refused: {e.message}") from None
        out = (identity, cert.public_key())
        self._certs.put(digest, out)
        return out


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and -1e13 < value < 1e13


def link_hashes(links: Sequence[str]) -> str | None:
    """The hash the next link's ``ph`` must carry (that of the last link), or None for a first link."""
    return token_hash(links[-1]) if links else None


class HopSigner:
    """Signs this member's links with one certificate and its key: the certificate its channel presents,
    so the receiver finds the link's signer in the mTLS handshake. A link to the same target for the same
    transaction and previous link is reused while more than half its lifetime is left."""

    def __init__(self, key: crypto.SigningKey, cert: x509.Certificate, signer: str, *, ttl: float,
                 clock: Callable[[], float], issuer: x509.Certificate | None = None) -> None:
        _algorithm(key)
        self.key = key
        self.cert_der = cert_der(cert)
        self.issuer_der = cert_der(issuer) if issuer is not None else None
        self.signer = signer
        self.ttl = ttl
        self.clock = clock
        self._made: dict[tuple[str, str | None, str], tuple[str, float]] = {}

    def link(self, txn_token: str, links: Sequence[str], aud: str) -> str:
        """The link that extends ``links`` (received with ``txn_token``) toward member ``aud``."""
        tth, ph = token_hash(txn_token), link_hashes(links)
        key, now = (tth, ph, aud), self.clock()
        hit = self._made.get(key)
        if hit is not None and now < hit[1]:
            return hit[0]
        made = sign_link(self.key, self.cert_der, signer=self.signer, aud=aud, tth=tth, ph=ph, now=now, ttl=self.ttl,
                         issuer_der=self.issuer_der)
        if len(self._made) >= 4096:
            self._made.clear()
        self._made[key] = (made, now + self.ttl / 2)
        return made
