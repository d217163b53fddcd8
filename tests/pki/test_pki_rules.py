"""The pure lifetime rules of the CA, as tables: the cliff, the rotation threshold, CRL numbers, DNS names."""

from __future__ import annotations

import pytest

from agentmesh.errors import ConfigError
from agentmesh.pki.certs import LeafWindow, issuer_problem, leaf_window, rotation_due, validate_dns_names
from agentmesh.pki.crl import next_crl_number

NB, NA = 1_000_000.0, 1_000_000.0 + 300 * 86400  # an issuer valid for 300 days


@pytest.mark.parametrize(("now", "expected"), [
    (NB - 1, "is not valid until 1970-01-12 13:46:40Z"),
    (NB, None),
    (NA - 1, None),
    (NA, "expired on 1970-11-08 13:46:40Z"),
    (NA + 86400, "expired on"),
])
def test_issuer_problem(now: float, expected: str | None) -> None:
    got = issuer_problem(now, NB, NA)
    assert got == expected if expected is None else got is not None and got.startswith(expected)


@pytest.mark.parametrize(("now", "ttl", "window"), [
    (NB + 1000, 3600, LeafWindow(NB + 940, NB + 4600, capped=False)),
    (NB + 10, 3600, LeafWindow(NB, NB + 3610, capped=False)),          # backdating stops at the issuer's start
    (NA - 100, 3600, LeafWindow(NA - 160, NA, capped=True)),           # capped at the issuer's end
    (NA - 3600, 3600, LeafWindow(NA - 3660, NA, capped=False)),        # exactly to the end: not capped
])
def test_leaf_window(now: float, ttl: float, window: LeafWindow) -> None:
    assert leaf_window(now, ttl, NB, NA, backdate=60) == window


@pytest.mark.parametrize(("now", "due"), [
    (NB - 1, True),          # not valid yet: nothing to wait for
    (NB, False),
    (NB + 199 * 86400, False),
    (NB + 200 * 86400, False),  # exactly a third left
    (NB + 200 * 86400 + 1, True),
    (NA, True),
    (NA + 1, True),
])
def test_rotation_due_once_less_than_a_third_is_left(now: float, due: bool) -> None:
    assert rotation_due(now, NB, NA) is due


@pytest.mark.parametrize(("previous", "now", "number"), [
    (None, 1000.0, 1_000_000),
    (5, 1000.0, 1_000_000),
    (1_000_000, 1000.0, 1_000_001),          # same millisecond
    (2_000_000, 1000.0, 2_000_001),          # the clock went back
])
def test_crl_number_only_grows(previous: int | None, now: float, number: int) -> None:
    assert next_crl_number(previous, now) == number


def test_dns_names() -> None:
    assert validate_dns_names(["a", "A.Mesh.svc", "a", "x-1.local"]) == ("a", "a.mesh.svc", "x-1.local")
    for bad in ["", "*.mesh.svc", "a..b", "-a", "a-", "a_b", "a b", "é.example", "a" * 64, ("a." * 127) + "a"]:
        with pytest.raises(ConfigError, match="invalid DNS name"):
            validate_dns_names([bad])
