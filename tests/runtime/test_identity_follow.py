"""``AgentIdentity`` follows its files: one new version per new identity, whenever a reader looks.

A reader may look in the middle of an install (``install_identity``: the key moved into place, the
certificate not yet): it finishes the install and reads the new identity. Its stamp of the files was
taken before, so the renewer's own ``reload()`` after the install sees other modification times; the
files are the ones already read, and that must not count as a second new identity (each version makes
a new connection and fetches a token for it; a flaky test saw three connections for one renewal).
"""

from __future__ import annotations

import os
from pathlib import Path

from support import TD, identity_dir, new_ca

from agentmesh.pki.certs import dump_cert, dump_key
from agentmesh.runtime.credentials import NEXT, AgentIdentity, install_identity


def test_a_look_in_the_middle_of_an_install_and_the_reload_after_it_make_one_new_version(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    directory = identity_dir(ca, tmp_path, "svc")
    identity = AgentIdentity(directory, TD, check_every=0)
    before = identity.thumbprint
    renewed = ca.renew("svc")
    assert renewed.key is not None
    # the install, stopped where a reader may see it: the new key in place, the certificate not yet
    (directory / ("bundle.pem" + NEXT)).write_bytes(renewed.bundle)
    (directory / ("cert.pem" + NEXT)).write_bytes(dump_cert(renewed.cert, *renewed.chain))
    os.replace(directory / "key.pem", directory / "key.pem.old")
    (directory / "key.pem").write_bytes(dump_key(renewed.key))

    assert identity.refresh() is True  # it finished the install, and follows the new identity
    assert identity.version == 1 and identity.thumbprint != before
    assert identity.reload() is False  # the same identity: no second version
    assert identity.version == 1

    again = ca.renew("svc")  # the next renewal is a new version, as always
    assert again.key is not None
    install_identity(directory, cert_chain=dump_cert(again.cert, *again.chain), key=dump_key(again.key),
                     bundle=again.bundle)
    assert identity.reload() is True and identity.version == 2
