"""Certificate signing requests: a member makes one for the key it was born with; the CA checks it.

Pure: bytes and an expected SPIFFE ID in, a public key or a :class:`~agentmesh.errors.PKIError` out.
The CA takes nothing from a CSR but its public key and the proof that the sender holds the private
key: the SPIFFE ID must be the one the CA expects, and DNS names, lifetime and key usage are the CA's
to decide, so a CSR that asks for anything else is refused rather than silently trimmed.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import PKIError
from agentmesh.identity import SpiffeId

__all__ = ["ALLOWED_CURVES", "MAX_CSR_PEM", "check_csr", "make_csr"]

#: a PEM CSR of one P-384 key with one URI SAN is under 1 KiB
MAX_CSR_PEM = 16 * 1024
ALLOWED_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP256R1, ec.SECP384R1)
_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_PEM_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR for ``key`` whose only extension is a SubjectAlternativeName with that one URI."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
                       critical=True)  # critical: the subject is empty (SPIFFE X509-SVID)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _refuse(rule: str) -> PKIError:
    return PKIError(f"certificate signing request refused: {rule}")


def _show(value: object) -> str:
    return repr(str(value)[:100])


def check_csr(csr_pem: bytes, expected: SpiffeId) -> ec.EllipticCurvePublicKey:
    """The public key of a CSR that proves possession of its key and asks for ``expected`` and nothing more."""
    if not isinstance(csr_pem, bytes) or len(csr_pem) > MAX_CSR_PEM:
        raise _refuse(f"not a PEM CSR of at most {MAX_CSR_PEM // 1024} KiB")
    if csr_pem.count(_PEM_BEGIN) != 1:
        raise _refuse("not a PEM certificate signing request (expected exactly one)")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        signed = csr.is_signature_valid
        algorithm = csr.signature_hash_algorithm
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _refuse("not a parseable PEM certificate signing request") from None
    if not signed:
        raise _refuse("its signature does not verify (no proof of possession of the key)")
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ALLOWED_CURVES):
        raise _refuse("key must be EC P-256 or P-384")
    if not isinstance(algorithm, _HASHES):
        raise _refuse("signature hash must be SHA-256, SHA-384 or SHA-512")
    try:
        extensions = list(csr.extensions)
    except ValueError:  # duplicated or malformed extensions
        raise _refuse("its extensions cannot be parsed") from None
    san: x509.SubjectAlternativeName | None = None
    for ext in extensions:
        if isinstance(ext.value, x509.BasicConstraints) and ext.value.ca:
            raise _refuse("it asks for a CA certificate")
        if not isinstance(ext.value, x509.SubjectAlternativeName):
            raise _refuse(f"extension {ext.oid.dotted_string} is not allowed (only SubjectAlternativeName)")
        san = ext.value
    if san is None:
        raise _refuse(f"no SubjectAlternativeName (expected {expected})")
    names = list(san)
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        kinds = ", ".join(sorted({type(n).__name__ for n in names}))
        raise _refuse(f"SubjectAlternativeName must be exactly one URI, {expected} (found {len(names)}: {kinds}); "
                      "DNS names are the CA's to decide")
    if names[0].value != str(expected):
        raise _refuse(f"it asks for {_show(names[0].value)}, not {expected}")
    return key
