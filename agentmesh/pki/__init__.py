"""The mini CA that ships with agentmesh: issuing (from a key or a CSR), revocation and the kill switch,
intermediate rotation and root rollover, one-time join tokens."""

from agentmesh.pki.ca import (
    BlockEntry,
    CertificateAuthority,
    IndexEntry,
    IssuedCert,
    MemberBlocked,
    write_identity,
    write_private,
)
from agentmesh.pki.csr import check_csr, make_csr
from agentmesh.pki.join import JoinGrant, JoinRefused, JoinTokens

__all__ = [
    "BlockEntry",
    "CertificateAuthority",
    "IndexEntry",
    "IssuedCert",
    "JoinGrant",
    "JoinRefused",
    "JoinTokens",
    "MemberBlocked",
    "check_csr",
    "make_csr",
    "write_identity",
    "write_private",
]
