"""One-time join tokens: a table of every refusal (with an injected clock), one use only even under a race,
only the hash on disk, and messages that never carry the token."""

from __future__ import annotations

import hashlib
import json
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agentmesh.clock import FakeClock
from agentmesh.errors import ConfigError, PKIError
from agentmesh.pki.join import MAX_TTL, JoinGrant, JoinRefused, JoinTokens, decide, fold, parse_token

T0 = 1_800_000_000.0
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def tokens(tmp_path: Path, clock: FakeClock) -> JoinTokens:
    return JoinTokens(tmp_path, clock=clock)


def test_only_the_canonical_spelling_of_a_secret_is_accepted() -> None:
    token = "amjoin1.0123456789abcdef." + "A" * 42 + "E"
    assert parse_token(token) == ("0123456789abcdef", bytes(31) + b"\x01")
    with pytest.raises(JoinRefused, match="not a join token"):
        parse_token(token[:-1] + "F")  # "E" and "F" differ only in the two bits beyond the 32 bytes


def secret_of(token: str) -> str:
    return token.rsplit(".", 1)[1]


def other_secret(token: str) -> str:
    head, secret = token.rsplit(".", 1)
    return f"{head}.{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"


def test_token_format_and_what_is_stored(tokens: JoinTokens) -> None:
    token = tokens.create("alpha", dns=["alpha.mesh.svc"])
    prefix, token_id, secret = token.split(".")
    assert prefix == "amjoin1" and len(token_id) == 16 and int(token_id, 16) >= 0
    assert len(secret) == 43 and "=" not in secret
    [line] = tokens.path.read_text().splitlines()
    record = json.loads(line)
    assert record == {"op": "create", "id": token_id, "name": "alpha", "dns": ["alpha.mesh.svc"],
                      "exp": T0 + 900, "sha256": hashlib.sha256(parse_token(token)[1]).hexdigest()}
    assert secret not in tokens.path.read_text()
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600


def test_the_file_is_made_private_again(tokens: JoinTokens) -> None:
    tokens.path.write_text("")
    tokens.path.chmod(0o644)
    tokens.create("alpha")
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600


def test_redeem_once(tokens: JoinTokens, clock: FakeClock) -> None:
    token = tokens.create("alpha", ttl=60, dns=["a.local"])
    clock.advance(59)
    grant = tokens.redeem(token)
    assert grant == JoinGrant(token.split(".")[1], "alpha", ("a.local",), T0 + 60)
    with pytest.raises(JoinRefused, match="already used") as err:
        tokens.redeem(token)
    assert err.value.reason == "used"
    assert json.loads(tokens.path.read_text().splitlines()[-1]) == {"op": "use", "id": grant.id, "at": T0 + 59}


Case = tuple[str, Callable[[str], str], float, tuple[str, ...], str]
CASES: list[Case] = [
    ("empty", lambda t: "", 0, (), "malformed"),
    ("prefix only", lambda t: "amjoin1", 0, (), "malformed"),
    ("other version", lambda t: t.replace("amjoin1", "amjoin2"), 0, (), "malformed"),
    ("upper-case id", lambda t: "amjoin1.ABCDEF0123456789." + secret_of(t), 0, (), "malformed"),
    ("short secret", lambda t: t[:-1], 0, (), "malformed"),
    ("padded secret", lambda t: t + "=", 0, (), "malformed"),
    ("extra part", lambda t: t + ".x", 0, (), "malformed"),
    ("space inside", lambda t: t.replace(".", ". ", 1), 0, (), "malformed"),
    ("huge", lambda t: t * 100, 0, (), "malformed"),
    ("non-canonical base64 (same bytes)", lambda t: t[:-1] + B64[B64.index(t[-1]) + 1], 0, (), "malformed"),
    ("unknown id", lambda t: "amjoin1.0123456789abcdef." + secret_of(t), 0, (), "unknown"),
    ("wrong secret", other_secret, 0, (), "unknown"),
    ("expired (at exp)", lambda t: t, 900, (), "expired"),
    ("expired (later)", lambda t: t, 86400, (), "expired"),
    ("blocked", lambda t: t, 0, ("alpha",), "blocked"),
    ("expired and blocked", lambda t: t, 900, ("alpha",), "expired"),
]


@pytest.mark.parametrize(("case", "mangle", "later", "blocked", "reason"), CASES, ids=[c[0] for c in CASES])
def test_every_refusal(tokens: JoinTokens, clock: FakeClock, case: str, mangle: Callable[[str], str], later: float,
                       blocked: tuple[str, ...], reason: str) -> None:
    token = tokens.create("alpha")
    presented = mangle(token)
    clock.advance(later)
    with pytest.raises(JoinRefused) as err:
        tokens.redeem(presented, blocked=blocked)
    assert err.value.reason == reason
    message = err.value.message
    assert message.startswith("join token refused: ") and "\n" not in message
    assert secret_of(token)[:8] not in message and (len(presented) < 16 or presented[-16:] not in message)
    assert "use" not in [json.loads(line)["op"] for line in tokens.path.read_text().splitlines()]


def test_a_refusal_does_not_spend_the_token(tokens: JoinTokens) -> None:
    token = tokens.create("alpha")
    with pytest.raises(JoinRefused, match="agent alpha is revoked"):
        tokens.redeem(token, blocked={"alpha"})
    with pytest.raises(JoinRefused):
        tokens.redeem(other_secret(token))
    assert tokens.redeem(token).name == "alpha"


def test_decide_is_pure(tokens: JoinTokens) -> None:
    token = tokens.create("alpha")
    known = fold(json.loads(line) for line in tokens.path.read_text().splitlines())
    with pytest.raises(JoinRefused, match="expired"):
        decide(known, token, now=T0 + 900)
    with pytest.raises(JoinRefused, match="unknown"):
        decide({}, token, now=T0)
    assert decide(known, token, now=T0).name == "alpha"
    assert decide(known, token, now=T0).name == "alpha"  # deciding spends nothing


def test_one_use_even_under_a_race(tokens: JoinTokens) -> None:
    token = tokens.create("alpha")
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def redeem() -> None:
        start.wait()
        try:
            outcomes.append(JoinTokens(tokens.path.parent, clock=tokens.clock).redeem(token).name)
        except JoinRefused as e:
            outcomes.append(e.reason)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["alpha"] + ["used"] * 7


def test_create_refusals(tokens: JoinTokens) -> None:
    for ttl in (0, -1, MAX_TTL + 1):
        with pytest.raises(PKIError, match="lifetime must be positive"):
            tokens.create("alpha", ttl=ttl)
    with pytest.raises(JoinRefused, match="agent alpha is revoked") as err:
        tokens.create("alpha", blocked={"alpha"})
    assert err.value.reason == "blocked"
    with pytest.raises(ConfigError, match="invalid agent name"):
        tokens.create("Alpha")
    with pytest.raises(ConfigError, match="invalid DNS name"):
        tokens.create("alpha", dns=["*.mesh.svc"])
    assert not tokens.path.exists() or tokens.path.read_text() == ""


def test_a_damaged_file_fails_closed(tokens: JoinTokens) -> None:
    token = tokens.create("alpha")
    with open(tokens.path, "a") as f:
        f.write('{"op": "use", "id": \n')
    with pytest.raises(PKIError, match=r"join token file .* is damaged") as err:
        tokens.redeem(token)
    assert secret_of(token) not in err.value.message
