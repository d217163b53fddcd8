"""The delegation settings of the ``tokens`` section, loaded from a mesh file: an external issuer may never
share the mesh's own ``iss`` (its keys would sign members' own tokens and transaction tokens), and the
transaction token and hop link lifetimes must be positive."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError
from agentmesh.tokens import crypto

TD = "example.org"


def mesh_file(tmp_path: Path, tokens: dict[str, Any]) -> Path:
    """A minimal mesh file with this ``tokens`` section, and a real JWKS file for external issuers."""
    key = crypto.generate_key("ES256")
    jwks = tmp_path / "idp-jwks.json"
    jwks.write_text(json.dumps({"keys": [{**crypto.public_jwk(key), "kid": "idp-1", "alg": "ES256", "use": "sig"}]}))
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({"trust_domain": TD, "agents": {"a": {"address": "127.0.0.1:7000"}},
                                    "tokens": tokens}))
    return path


def external(iss: str) -> dict[str, str]:
    return {"iss": iss, "jwks_file": "idp-jwks.json"}


@pytest.mark.parametrize(("tokens", "issuers"), [
    pytest.param({}, (), id="no external issuer"),
    pytest.param({"issuers": [external("https://idp.example.com")]}, ("https://idp.example.com",),
                 id="an external issuer"),
    pytest.param({"issuer": "https://mesh.example.com", "issuers": [external(f"spiffe://{TD}")]}, (f"spiffe://{TD}",),
                 id="the default mesh iss, when the mesh uses another"),
    pytest.param({"issuers": [external(f"spiffe://{TD}/")]}, (f"spiffe://{TD}/",),
                 id="another iss by one character (iss is matched exactly)"),
])
def test_external_issuers_accepted(tmp_path: Path, tokens: dict[str, Any], issuers: tuple[str, ...]) -> None:
    cfg = load_config(mesh_file(tmp_path, tokens))
    assert tuple(e.issuer for e in cfg.tokens.issuers) == issuers
    assert cfg.tokens.issuer not in issuers


@pytest.mark.parametrize("tokens", [
    pytest.param({"issuers": [external(f"spiffe://{TD}")]}, id="the default mesh issuer"),
    pytest.param({"issuer": "https://mesh.example.com", "issuers": [external("https://mesh.example.com")]},
                 id="a configured mesh issuer"),
    pytest.param({"issuers": [external("https://idp.example.com"), external(f"spiffe://{TD}")]},
                 id="the second of two"),
])
def test_external_issuer_with_the_mesh_iss_is_refused(tmp_path: Path, tokens: dict[str, Any]) -> None:
    path = mesh_file(tmp_path, tokens)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = err.value.message
    assert message.startswith(f"{path}: tokens.issuers: ")
    assert "the mesh's own issuer" in message and "\n" not in message


@pytest.mark.parametrize(("tokens", "expected"), [
    pytest.param({}, (300.0, 60.0), id="defaults"),
    pytest.param({"txn_ttl": "2m", "link_ttl": "15s"}, (120.0, 15.0), id="durations"),
    pytest.param({"txn_ttl": 1, "link_ttl": 0.5}, (1.0, 0.5), id="small numbers"),
    pytest.param({"txn_ttl": 0}, "tokens.txn_ttl", id="txn_ttl 0"),
    pytest.param({"txn_ttl": "0s"}, "tokens.txn_ttl", id="txn_ttl 0s"),
    pytest.param({"link_ttl": 0}, "tokens.link_ttl", id="link_ttl 0"),
    pytest.param({"txn_ttl": -5}, "tokens.txn_ttl", id="txn_ttl negative"),
    pytest.param({"txn_ttl": "soon"}, "tokens.txn_ttl", id="txn_ttl not a duration"),
])
def test_txn_and_link_ttl(tmp_path: Path, tokens: dict[str, Any], expected: tuple[float, float] | str) -> None:
    path = mesh_file(tmp_path, tokens)
    if isinstance(expected, tuple):
        cfg = load_config(path)
        assert (cfg.tokens.txn_ttl, cfg.tokens.link_ttl) == expected
        return
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.message.startswith(f"{path}: {expected}: ") and "\n" not in err.value.message
