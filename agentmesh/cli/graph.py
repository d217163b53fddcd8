"""``agentmesh graph [CONFIG] [--endpoint URL]... -o dot|mermaid|json|svg [--out FILE]``: the mesh as a picture.

Members are the nodes (those the config names, and every member seen in the metrics), calls the
edges, labelled with their rate, error and denial shares since the members started (the same data
as ``agentmesh top``). DOT renders with Graphviz (``agentmesh graph mesh.yaml | dot -Tsvg >
mesh.svg``), Mermaid in Markdown viewers, SVG (:mod:`agentmesh.cli.graphsvg`) in a browser with no
Graphviz installed. Every format labels and colours an edge with :func:`edge_style`: red with errors,
orange with denials only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from agentmesh.audit.promview import EdgeView, edges, scrape_all
from agentmesh.cli.text import printable
from agentmesh.cli.top import add_endpoint_arguments, endpoints
from agentmesh.cli.usage import examples
from agentmesh.configfile import load_config

__all__ = ["EdgeStyle", "dot", "edge_style", "mermaid", "register"]

FORMATS = ("dot", "mermaid", "json", "svg")
#: edge colours: names that Graphviz (X11), Mermaid (CSS) and SVG all know
ERROR_COLOR, DENIAL_COLOR, PLAIN_COLOR = "red", "orange", "dimgray"
_SAFE = re.compile(r"[^A-Za-z0-9._:@-]")  # names come from scraped labels: nothing else reaches the text


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("graph", help="the mesh as a graph: members, edges, traffic (DOT, Mermaid, JSON or SVG)",
                       **examples(
                           "agentmesh graph mesh.yaml | dot -Tsvg > mesh.svg",
                           "agentmesh graph mesh.yaml -o svg > mesh.svg",
                           "agentmesh graph mesh.yaml -o svg --out mesh.svg",
                           "agentmesh graph mesh.yaml -o mermaid",
                           "agentmesh graph --endpoint 127.0.0.1:9464 -o json",
                       ))
    add_endpoint_arguments(p)
    p.add_argument("-o", "--output", choices=FORMATS, default="dot", metavar="FORMAT",
                   help="dot (default), mermaid, json or svg (a picture, no Graphviz needed)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=_run)


def _name(value: str) -> str:
    return _SAFE.sub("_", value)[:64] or "_"


class EdgeStyle(NamedTuple):
    label: str  # "2.50 rps, 10% err, 5% denied"
    color: str  # ERROR_COLOR, DENIAL_COLOR or PLAIN_COLOR


def edge_style(e: EdgeView) -> EdgeStyle:
    """How every format draws an edge: its rate, then its error and denial shares when not zero; red
    with errors, orange with denials only."""
    parts = [f"{e.rps:.2f} rps"]
    if e.error_rate:
        parts.append(f"{e.error_rate:.0%} err")
    if e.denial_rate:
        parts.append(f"{e.denial_rate:.0%} denied")
    color = ERROR_COLOR if e.error_rate else DENIAL_COLOR if e.denial_rate else PLAIN_COLOR
    return EdgeStyle(", ".join(parts), color)


def dot(members: Iterable[str], rows: Sequence[EdgeView]) -> str:
    lines = ["digraph agentmesh {", "  rankdir=LR;", '  node [shape=box, style="rounded"];']
    lines += [f'  "{_name(m)}";' for m in members]
    for e in rows:
        label, color = edge_style(e)
        lines.append(f'  "{_name(e.source)}" -> "{_name(e.destination)}" [label="{label}", color={color}, '
                     f"fontcolor={color}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def mermaid(members: Iterable[str], rows: Sequence[EdgeView]) -> str:
    ids: dict[str, str] = {}
    lines = ["flowchart LR"]
    for m in members:
        ids[m] = f"m{len(ids)}"
        lines.append(f'  {ids[m]}["{_name(m)}"]')
    for i, e in enumerate(rows):
        label, color = edge_style(e)
        lines.append(f'  {ids[e.source]} -->|"{label}"| {ids[e.destination]}')
        if color != PLAIN_COLOR:
            lines.append(f"  linkStyle {i} stroke:{color}")
    return "\n".join(lines) + "\n"


def _members(config_path: str | None, seen: Iterable[str], rows: Sequence[EdgeView]) -> list[str]:
    names = list(load_config(config_path).members()) if config_path else []
    for name in (*sorted(seen), *(n for e in rows for n in (e.source, e.destination))):
        if name not in names:
            names.append(name)
    return names


def _run(args: argparse.Namespace) -> int:
    urls = endpoints(args.config, args.endpoint)
    scrape = scrape_all(urls, at=time.time(), timeout=args.timeout, housekeeping=args.housekeeping)
    rows = edges(scrape)
    members = _members(args.config, scrape.members, rows)
    if args.output == "json":
        text = json.dumps({"members": members, "edges": [r.as_dict() for r in rows],
                           "unreachable": scrape.unreachable}, indent=2) + "\n"
    elif args.output == "svg":
        from agentmesh.cli.graphsvg import svg  # here, not at the top: graphsvg draws with edge_style from here

        text = svg(members, rows)
    else:
        text = (dot if args.output == "dot" else mermaid)(members, rows)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for url, why in sorted(scrape.unreachable.items()):  # (the reason may be an endpoint's own words)
        print(printable(f"agentmesh graph: unreachable: {url} ({why})"), file=sys.stderr)
    return 1 if len(scrape.unreachable) == len(urls) else 0
