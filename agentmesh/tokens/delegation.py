"""Who is calling, as one decision: the peer's own token, and for a delegated call the transaction
token and the chain of hop links, in; a verified :class:`Caller` or a typed error out.

:func:`verify_caller` is what the server chain's token stage runs on every call (the stage only reads
metadata and writes the result into the call context); :func:`check_chain` is its pure structural
core, table-tested on its own. Every refusal of a delegation is a :class:`DelegationError` whose
``check`` names what failed (recorded in the audit span):

==================  ============================================================================
check               refused when
==================  ============================================================================
``txn-token``       the transaction token is forged, expired or for another trust domain
``txn-revoked``     the subject token the transaction was exchanged for was revoked
``links``           a transaction token without links, or links without a transaction token
``depth``           more hops than ``tokens.max_delegation_depth`` (counted before any signature)
``link-format``     a link is not a mesh link (size, JSON, header, claims)
``link-certificate`` a link's certificate does not chain to an issuing CA of the mesh
``link-signature``  a link's signature does not verify with its certificate's key
``link-signer``     a link names another signer than its certificate
``link-revoked``    a link's signer is revoked (certificate or member) or its certificate expired
``prior-revoked``   a member a replacement token names as an earlier hop (``prior``) was revoked
``link-txn``        a link is for another transaction token (``tth``)
``link-expired``    the link to this member is past its ``exp``, or any link is issued in the future
                    (earlier links were checked in time by the member they were for; the
                    transaction token's ``exp`` bounds the whole chain)
``link-order``      a link does not follow the link before it (``ph``): a hop dropped, reordered
                    or invented
``link-aud``        a link's audience is not the next link's signer, or is its own signer
``first-hop``       the first link is not signed by the workload the transaction token was issued
                    to (``req_wl``)
``last-hop``        the last link is not signed by this call's mTLS peer (its very certificate)
``audience``        the last link is addressed to another member than this one
==================  ============================================================================

A member can therefore only append itself to a chain: it cannot invent, drop or reorder earlier
hops (their links are signed by their keys and hash-chained), nor reuse a chain toward another
target (the last link names this member), nor start one with a stolen transaction token (the first
link must be signed by the workload it was issued to).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agentmesh.errors import DelegationError, PeerIdentityError, TokenError
from agentmesh.identity import PeerIdentity, SpiffeId
from agentmesh.tokens.crypto import HMAC_ALGORITHMS
from agentmesh.tokens.links import Link, LinkVerifier
from agentmesh.tokens.txn import TxnToken, TxnVerifier
from agentmesh.tokens.verify import TokenVerifier, VerifiedToken
from agentmesh.trust import RevocationPolicy, TrustSnapshot, check_member, check_peer

__all__ = ["Caller", "Checks", "check_chain", "split_links", "verify_caller"]


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller: the principal it acts for, and for a delegated call the transaction and
    the verified chain of members it passed (SPIFFE IDs, oldest first, the mTLS peer last)."""

    principal: str
    roles: tuple[str, ...]
    own: VerifiedToken  # the peer's own token (re-checked for revocation while the call runs)
    txn: TxnToken | None = None
    chain: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()

    @property
    def scope(self) -> tuple[str, ...]:
        return self.txn.scope if self.txn is not None else ()


@dataclass(frozen=True, slots=True)
class Checks:
    """The verifiers and limits the decision uses (built once per member)."""

    tokens: TokenVerifier
    txns: TxnVerifier
    links: LinkVerifier
    mesh_issuer: str
    max_depth: int
    policy: RevocationPolicy
    leeway: float = 30.0  # seconds of clock skew tolerated on a link's iat/exp (tokens.leeway)


def principal_of(token: VerifiedToken, mesh_issuer: str) -> str:
    """The principal a verified token names: its subject for the mesh issuer; ``<iss>#<sub>`` for an
    external issuer, so another issuer can never take the name of a mesh principal (or share its
    rate-limit bucket)."""
    return token.sub if token.iss == mesh_issuer else f"{token.iss}#{token.sub}"


def split_links(value: str | None, max_depth: int) -> tuple[str, ...]:
    """The links of a ``txn-links`` value (comma-separated compact JWS), refused past ``max_depth``
    before anything is parsed."""
    if not value:
        return ()
    if value.count(",") >= max_depth:
        raise DelegationError("depth", f"delegation chain longer than tokens.max_delegation_depth ({max_depth})")
    return tuple(value.split(","))


def check_chain(txn: TxnToken, links: Sequence[Link], *, peer_uri: str | None, peer_thumbprint: str | None,
                me: str, now: float, leeway: float, max_depth: int) -> tuple[str, ...]:
    """The verified chain (``txn.prior`` then every link's signer) if the links form an unbroken chain
    from the transaction token's requester to this member over this very mTLS peer; else a
    :class:`DelegationError`. Pure: the links' signatures were checked by the caller. With
    ``peer_uri=None`` the last hop is not compared to an mTLS peer (the control plane, checking a
    chain a member presents for a replacement token)."""
    if not links:
        raise DelegationError("links", "a transaction token needs the hop links of its delegation")
    if len(txn.prior) + len(links) > max_depth:
        raise DelegationError("depth", f"delegation chain longer than tokens.max_delegation_depth ({max_depth})")
    if links[0].signer != txn.req_wl:
        raise DelegationError("first-hop", "the first hop is not the workload the transaction token was issued to")
    previous: Link | None = None
    for link in links:
        if link.tth != txn.hash:
            raise DelegationError("link-txn", f"the hop link of {link.signer} is for another transaction token")
        if link.iat > now + leeway:
            raise DelegationError("link-expired", f"the hop link of {link.signer} is not yet valid")
        if link.aud == link.signer:
            raise DelegationError("link-aud", f"the hop link of {link.signer} is addressed to itself")
        if previous is None:
            if link.ph is not None:
                raise DelegationError("link-order", "the first hop link claims a previous hop")
        else:
            if link.ph != previous.hash:
                raise DelegationError("link-order", f"the hop link of {link.signer} does not follow the hop "
                                                    f"before it")
            if previous.aud != link.signer:
                raise DelegationError("link-aud", f"the hop link of {previous.signer} is addressed to "
                                                  f"another member than {link.signer}")
        previous = link
    last = links[-1]
    if now > last.exp + leeway:  # earlier links were checked in time by the hop they were for; the txn bounds them
        raise DelegationError("link-expired", f"the hop link of {last.signer} expired")
    if peer_uri is not None and (last.signer != peer_uri or last.thumbprint != peer_thumbprint):
        raise DelegationError("last-hop", "the last hop link is not signed by this call's peer certificate")
    if last.aud != me:
        raise DelegationError("audience", "the last hop link is addressed to another member")
    return (*txn.prior, *(link.signer for link in links))


def check_signers(links: Sequence[Link], snapshot: TrustSnapshot | None, *, now: float,
                  policy: RevocationPolicy) -> None:
    """Every link's signer still valid: certificate unexpired, neither it nor its member revoked. Signers
    count as peers this call introduces: on stale revocation data ``failure_mode: closed`` refuses them
    (UNAVAILABLE), as it refuses new mTLS peers."""
    for link in links:
        if now > link.cert_not_after:
            raise DelegationError("link-revoked", f"the certificate of hop {link.signer} expired")
        try:
            check_peer(snapshot, serial=link.serial, name=link.name, spiffe_id=link.signer, known=False, now=now,
                       policy=policy)
        except PeerIdentityError as e:  # revoked; stale data stays UNAVAILABLE (revocation.failure_mode)
            raise DelegationError("link-revoked", f"hop {link.signer}: {e.message}") from None


def check_prior(txn: TxnToken, snapshot: TrustSnapshot | None) -> None:
    """The hops a replacement token vouches for (``prior``) must not be revoked members since."""
    for member in txn.prior:
        try:
            check_member(snapshot, SpiffeId.parse(member).agent_name)
        except PeerIdentityError as e:
            raise DelegationError("prior-revoked", f"earlier hop {member}: {e.message}") from None


def verify_links(txn_token: str, raw_links: Sequence[str], *, checks: Checks, snapshot: TrustSnapshot | None,
                 peer: PeerIdentity | None, me: str, now: float) -> tuple[TxnToken, tuple[str, ...], tuple[Link, ...]]:
    """The transaction token and its links, verified (signatures, structure, signers): ``(txn, chain, links)``."""
    txn = checks.txns.verify(txn_token)
    links = tuple(checks.links.verify(raw) for raw in raw_links)
    chain = check_chain(txn, links, peer_uri=peer.uri if peer else None,
                        peer_thumbprint=peer.thumbprint if peer else None, me=me, now=now,
                        leeway=checks.leeway, max_depth=checks.max_depth)
    check_signers(links, snapshot, now=now, policy=checks.policy)
    check_prior(txn, snapshot)
    return txn, chain, links


def verify_caller(peer: PeerIdentity, own_token: str | None, txn_token: str | None, links: str | None, *,
                  me: str, checks: Checks, snapshot: TrustSnapshot | None, now: float) -> Caller:
    """The verified caller of one call from ``peer`` to member ``me``.

    The peer's own token must verify, come from the mesh issuer and be bound to the peer's certificate.
    Without a transaction token the peer acts for itself (its token's subject and roles); with one,
    for the transaction's principal, with the roles and scope the transaction token carries.
    """
    if own_token is None:
        raise TokenError("missing bearer token")
    try:
        own = checks.tokens.verify(own_token, peer_thumbprint=peer.thumbprint, peer_spiffe_id=peer.uri,
                                   require_binding=True)
    except TokenError as e:
        raise TokenError(f"{e.message} (caller's own token)") from None
    if own.iss != checks.mesh_issuer:  # only the control plane speaks for mesh members
        raise TokenError("a caller's own token must come from the mesh issuer")
    if own.alg in HMAC_ALGORITHMS:  # a shared secret is held by every member that verifies with it
        raise TokenError("a caller's own token must be signed by the control plane's key, not a shared secret")
    if txn_token is None:
        if links:
            raise DelegationError("links", "hop links without a transaction token")
        return Caller(own.sub, own.roles, own)
    raw_links = split_links(links, checks.max_depth)
    txn, chain, verified = verify_links(txn_token, raw_links, checks=checks, snapshot=snapshot, peer=peer, me=me,
                                        now=now)
    return Caller(txn.sub, txn.roles, own, txn, chain, verified)
