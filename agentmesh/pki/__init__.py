"""The mini CA that ships with agentmesh."""

from agentmesh.pki.ca import CertificateAuthority, IndexEntry, IssuedCert, write_identity, write_private
from agentmesh.pki.crl import RevocationList

__all__ = ["CertificateAuthority", "IndexEntry", "IssuedCert", "RevocationList", "write_identity", "write_private"]
