"""External clients through the real bridge while every member, the bridge included, renews its certificate
itself every couple of seconds: the bridge's HTTPS certificate and its mesh identity follow, zero failures."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest
from bridgekit import running_bridge, tls_context
from conftest import AGENTS, SECTIONS
from cryptography import x509
from meshkit import free_port

LIFETIME = 4.0
ECHO = "/v1/agents/alpha/bridgetest.v1.Probe/Echo"


def served_serial(url: str, bundle: Path) -> int:
    host, port = url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            tls_context(bundle).wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.slow  # a long run: under CI=true (see tests/conftest.py)
@pytest.mark.asyncio
async def test_clients_through_the_bridge_across_three_lifetimes_of_renewal(tmp_path: Path) -> None:
    sections = {**SECTIONS, "control": {"address": f"127.0.0.1:{free_port()}", "cert_ttl": f"{LIFETIME:.0f}s"},
                "tokens": {"revocation_refresh": "1s"}}
    async with running_bridge(tmp_path, AGENTS, serve=["alpha"], leaf_ttl=LIFETIME, **sections) as mesh:
        bundle = mesh.config.identity_dir("bridge") / "bundle.pem"
        auth = mesh.auth()
        served: set[int] = set()
        failures: list[str] = []
        ok = 0
        started = time.monotonic()
        while time.monotonic() - started < 3 * LIFETIME or len(served) < 3:
            assert time.monotonic() - started < 10 * LIFETIME, f"HTTPS certificates served: {len(served)}"
            # a new client each round: new TLS handshakes see whatever certificate the bridge holds now
            async with httpx.AsyncClient(base_url=mesh.url, verify=tls_context(bundle), timeout=10) as client:
                for _ in range(5):
                    r = await client.post(ECHO, json={"name": "x"}, headers=auth)
                    if r.status_code == 200:
                        ok += 1
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")
            served.add(await asyncio.to_thread(served_serial, mesh.url, bundle))  # uvicorn runs in this loop
        assert not failures, failures[:5]
        assert ok > 50
        assert len(served) >= 3  # the HTTPS certificate changed at least twice, without a restart
        assert mesh.nodes["alpha"].renewer.renewals >= 2  # type: ignore[union-attr]
