"""``agentmesh top [CONFIG] [--endpoint URL]...``: the mesh's edges, live, from the members' metrics.

One row per edge (source member -> destination member): requests per second, latency p50 / p99, and
the share of requests that failed (ERR) or that the mesh refused (DENY: policy, token, rate limit,
guard). The first frame counts since each member started; each next one (every ``--interval``
seconds) the window since the previous frame. ``--once`` prints the first frame and exits.

The endpoints are those of the config's ``metrics`` section (docs/OBSERVABILITY.md), those the running
``agentmesh up`` of that config recorded in its ``run.json`` (the free ports it picked when the config names
none), and any ``--endpoint`` (``host:port`` or a URL). The control plane's housekeeping (members' trust stream and
token refreshes) is left out unless ``--housekeeping``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from agentmesh.audit.promview import EdgeView, Scrape, edges, metrics_url, scrape_all
from agentmesh.cli.output import add_output, emit, table
from agentmesh.cli.text import printable
from agentmesh.cli.usage import examples
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError
from agentmesh.runtime.runlogs import running_metrics

__all__ = ["endpoints", "frame_lines", "register"]

CLEAR = "\x1b[H\x1b[2J"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("top", help="live view of the mesh's edges (rps, latency, errors, denials)", **examples(
        "agentmesh top mesh.yaml",
        "agentmesh top --endpoint 127.0.0.1:9464 --endpoint 127.0.0.1:9465 --interval 5",
        "agentmesh top mesh.yaml --once -o json",
    ))
    add_endpoint_arguments(p)
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="seconds between frames (2)")
    p.add_argument("--once", action="store_true", help="print one frame (since the members started) and exit")
    add_output(p)
    p.set_defaults(func=_run)


def add_endpoint_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG, ``--endpoint`` and ``--housekeeping`` (``top`` and ``graph``)."""
    p.add_argument("config", nargs="?", help="mesh config file: its metrics section names the endpoints")
    p.add_argument("--endpoint", action="append", default=[], metavar="URL",
                   help="a member's metrics endpoint (host:port or URL); repeatable")
    p.add_argument("--housekeeping", action="store_true",
                   help="count the control plane's housekeeping calls too (trust stream, token refreshes)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="per scrape (2)")


def endpoints(config_path: str | None, extra: Sequence[str]) -> list[str]:
    """The metrics URLs of every member of the config: where the ``agentmesh up`` running it serves them, else
    the config's address (not port 0: any free port, known to the member only); then ``extra``."""
    urls: list[str] = []
    if config_path:
        config = load_config(config_path)
        recorded = running_metrics(config.ca_dir.parent / "logs")
        addresses = [recorded.get(n) or config.metrics_address(n) for n in config.members()]
        urls += [metrics_url(a) for a in addresses if a is not None and not a.endswith(":0")]
    urls += [metrics_url(e) for e in extra]
    if not urls:
        raise ConfigError("no metrics endpoints: give a config with a metrics section or one that agentmesh up "
                          "runs, or --endpoint host:port")
    return list(dict.fromkeys(urls))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def frame_lines(rows: Sequence[EdgeView], scrape: Scrape, window: str) -> list[str]:
    """The table of edges and its footer; names and reasons come from the endpoints, so they are escaped."""
    lines = table([("SOURCE", "DESTINATION", "RPS", "REQS", "ERR", "DENY", "P50", "P99"),
                   *((printable(r.source), printable(r.destination) + ("*" if r.seen_by == "client" else ""),
                      f"{r.rps:.2f}", f"{r.requests:.0f}", f"{r.error_rate:.1%}", f"{r.denial_rate:.1%}",
                      _ms(r.p50), _ms(r.p99))
                     for r in rows)])
    if not rows:
        lines.append("(no calls yet)")
    members = ", ".join(printable(m) for m in sorted(scrape.members)) or "none"
    lines.append(f"{len(rows)} edge(s), {window}; members: {members}"
                 + ("; * seen by the caller" if any(r.seen_by == "client" for r in rows) else ""))
    lines += [printable(f"unreachable: {url} ({why})") for url, why in sorted(scrape.unreachable.items())]
    return lines


def _emit(args: argparse.Namespace, rows: list[EdgeView], scrape: Scrape, window: str, out: TextIO) -> None:
    data = {"at": scrape.at, "window": window, "edges": [r.as_dict() for r in rows],
            "members": sorted(scrape.members), "unreachable": scrape.unreachable}
    emit(args.output, data, lambda: frame_lines(rows, scrape, window), out)


def _run(args: argparse.Namespace) -> int:
    urls = endpoints(args.config, args.endpoint)
    if not args.interval > 0:
        raise ConfigError("--interval: must be more than 0 seconds")
    out = sys.stdout
    before: Scrape | None = None
    while True:
        scrape = scrape_all(urls, at=time.time(), timeout=args.timeout, housekeeping=args.housekeeping)
        window = "since the members started" if before is None else f"last {scrape.at - before.at:.1f}s"
        if not args.once and args.output == "table":
            out.write(CLEAR)
        _emit(args, edges(scrape, before), scrape, window, out)
        out.flush()
        if args.once:
            return 1 if len(scrape.unreachable) == len(urls) else 0
        before = scrape
        time.sleep(args.interval)  # the refresh period of a live view
