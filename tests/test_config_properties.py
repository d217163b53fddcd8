"""Machine-made mesh files: ``load_config`` gives a valid MeshConfig or one clear ConfigError, nothing else.

Mesh files are generated three ways: a valid file with keys deleted, renamed (misspelt), added, or given
values of any YAML type; arbitrary mappings over the mesh file's vocabulary; and valid files mutated as
text. Each is written to disk and loaded. It must load, or raise one :class:`ConfigError` whose message is
one line and, after the file's path, names a key of the document (``agents.a.address: ...``,
``policy[0]: ...``; ``config:`` for the document itself) or, for text that is not YAML, says where.
Any other exception, or a load that does not return within the time limit, is a failure.

The default run is small and derandomized; the ``slow`` variants run many more random examples when
``CI=true`` or ``AGENTMESH_SLOW=1``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings
from hypothesis import strategies as st
from properties import profiles, run, time_limit

from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError

PROFILES = profiles(40, 500)
SECONDS = 5.0  # per example: far above the milliseconds a load takes, so only a hang trips it

#: a valid mesh file using every section
VALID: dict[str, Any] = {
    "trust_domain": "example.org",
    "ca": ".mesh/ca",
    "identities": ".mesh/identities",
    "control": {"address": "127.0.0.1:7100", "join_address": "127.0.0.1:7099", "cert_ttl": "24h"},
    "revocation": {"max_staleness": "2m", "failure_mode": "closed"},
    "agents": {
        "ingestor": {"address": "127.0.0.1:7101", "app": "examples.workflow.ingestor:Ingestor", "roles": ["ingestor"]},
        "summarizer": {"address": "127.0.0.1:7102", "roles": ["summarizer"], "replicas": ["127.0.0.1:7202"]},
    },
    "tokens": {"audience": "agentmesh", "ttl": "5m", "leeway": "30s", "max_delegation_depth": 4,
               "algorithms": ["ES256", "EdDSA"],
               "issuers": [{"iss": "https://idp.example.com", "jwks_url": "https://idp.example.com/jwks.json",
                            "audience": "mesh", "roles_claim": "groups"}]},
    "policy": [
        {"name": "no-outside-summarizer", "action": "deny", "to": ["summarizer"], "via": ["bridge"]},
        {"name": "client-starts", "action": "allow", "to": ["ingestor"], "methods": ["/agentmesh.v1.Agent/*"],
         "roles": ["client"], "via": ["bridge"]},
        {"name": "ingestor-to-summarizer", "action": "allow", "to": ["summarizer"], "from": ["ingestor"],
         "methods": ["/agentmesh.v1.Agent/Invoke"]},
    ],
    "rate_limits": {"backend": "memory", "failure_mode": "open",
                    "rules": [{"name": "clients", "match": {"roles": ["client"]}, "rate": "2/s", "burst": 5}]},
    "guard": {"max_request_bytes": "256KiB", "action": "block"},
    "audit": {"exporters": ["jsonl"], "jsonl_path": ".mesh/audit.jsonl", "required": False},
    "bridge": {"listen": "127.0.0.1:8443", "tls": True, "cors_origins": ["https://app.example.com"],
               "max_body": "1MiB", "max_timeout": "60s"},
}
TOP = frozenset(VALID) | {"config", "max_connection_age", "grace_period"}


def _vocabulary(value: Any, out: set[str]) -> set[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(k)
            _vocabulary(v, out)
    elif isinstance(value, list):
        for v in value:
            _vocabulary(v, out)
    return out


KEYS = sorted(_vocabulary(VALID, set()))
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.sampled_from(
    ["127.0.0.1:0", "[::1]:80", "5m", "-1s", "1e400", "10/s", "0/s", "1MiB", "-1KiB", "ES256", "none", "redis://x",
     "spiffe://example.org", "https://idp.example.com", "~/x", "/agentmesh.v1.Agent/Invoke", "Invoke", "*", "",
     "ingestor", "summarizer", "bridge", "closed", "open", "allow", "deny", "nan", "yes"])
YAML_KEYS = st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(-2, 2) | st.booleans() | st.none()
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(YAML_KEYS, kids, max_size=4),
                      max_leaves=12)


# ---------------------------------------------------------------------- the property
def names_a_key(rest: str, doc: Any) -> bool:
    """Whether an error message (after the file's path) starts with a key path of the document."""
    keys = {str(k) for k in doc} if isinstance(doc, dict) else set()
    tops = set(TOP) | keys | {repr(k) for k in keys if not k.isprintable()}  # such keys are shown quoted
    # "agents.a.address: ...", "policy[0]: ...", "tokens.issuers (https://idp): ...", "policy rule r: to: ..."
    return any(rest.startswith((f"{k}:", f"{k}.", f"{k}[", f"{k} ")) for k in tops)


def load_or_one_clear_error(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    with time_limit(SECONDS):
        try:
            cfg = load_config(path)
        except ConfigError as e:
            message = e.message
            assert message == str(e)
        else:
            assert isinstance(cfg, MeshConfig)
            return
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    prefix = f"{path}: "
    assert message.startswith(prefix), f"does not name the file: {message!r}"
    rest = message[len(prefix):]
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        assert rest.startswith("invalid YAML"), f"a YAML error not called one: {rest!r}"
        assert "line" in rest, f"a YAML error without its place: {rest!r} ({type(e).__name__})"
        return
    assert names_a_key(rest, doc), f"names no key of the document: {rest!r}"


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------- generated documents
def paths_of(value: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into a document (dict keys and list indices)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*here, k)
            yield from paths_of(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*here, i)
            yield from paths_of(v, (*here, i))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def mutated_valid(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(paths_of(doc))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(doc, path), path[-1]
        op = draw(st.sampled_from(["delete", "replace", "rename", "add", "duplicate"]))
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(VALUES)
        elif op == "rename" and isinstance(parent, dict):
            key = str(last)
            i = draw(st.integers(0, max(0, len(key) - 1)))
            new = draw(st.sampled_from([key[:i] + key[i + 1:], key[:i] + "x" + key[i:], key.upper(), key + "s"]))
            parent[new] = parent.pop(last)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(YAML_KEYS)] = draw(VALUES)
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return doc


def arbitrary_documents() -> st.SearchStrategy[Any]:
    """Mappings over the mesh file's vocabulary (mostly), or any YAML value."""
    sections = st.fixed_dictionaries({}, optional={k: VALUES for k in VALID})
    return sections | st.dictionaries(YAML_KEYS, VALUES, max_size=6) | VALUES


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = dump(draw(mutated_valid()) if draw(st.booleans()) else VALID)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from([":", "- ", "  ", "\t", "{", "}", "[", "]", "&a ", "*a", "!!python/object ",
                                      "'", '"', "#", "\n", "? ", "|", ">", "%", "@", "`", "---\n", "..."])
                     | st.text(max_size=4))
        text = text[:i] + piece + text[i + draw(st.integers(0, 2)):]
    return text


def test_the_valid_document_loads(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(dump(VALID))
    assert isinstance(load_config(path), MeshConfig)


@pytest.mark.parametrize("profile", PROFILES)
def test_mutated_valid_documents(tmp_path: Path, profile: settings) -> None:
    path = tmp_path / "mesh.yaml"
    run(profile, mutated_valid(), lambda doc: load_or_one_clear_error(path, dump(doc)))


@pytest.mark.parametrize("profile", PROFILES)
def test_arbitrary_documents(tmp_path: Path, profile: settings) -> None:
    path = tmp_path / "mesh.yaml"
    run(profile, arbitrary_documents(), lambda doc: load_or_one_clear_error(path, dump(doc)))


@pytest.mark.parametrize("profile", PROFILES)
def test_mutated_text(tmp_path: Path, profile: settings) -> None:
    path = tmp_path / "mesh.yaml"
    run(profile, mutated_text(), lambda text: load_or_one_clear_error(path, text))


def test_a_yaml_reader_error_says_where(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("trust_domain: example.org\nagents: {}\nca: .mesh/\x08ca\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "line 3" in err.value.message and "\n" not in err.value.message


@pytest.mark.parametrize("section, key", [("control", "address"), ("bridge", "listen"), ("rate_limits", "backend")])
def test_a_null_value_takes_the_default_or_is_refused(tmp_path: Path, section: str, key: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(dump({**VALID, section: {**VALID[section], key: None}}))
    try:
        load_config(path)
    except ConfigError as e:
        assert names_a_key(e.message.removeprefix(f"{path}: "), VALID)


def test_an_unknown_key_with_a_line_break_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(dump({**VALID, "guard": {**VALID["guard"], "act\rion": "block"}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\r" not in err.value.message and "\n" not in err.value.message
