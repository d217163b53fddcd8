"""``agentmesh graph -o svg``: the mesh as one self-contained SVG document, laid out without Graphviz.

Written by hand because none of our dependencies draws a layered graph to SVG, no well-kept
pure-Python library does it, and Graphviz (what ``-o dot`` feeds) is a system binary operators may
not have. The drawing is kept small:

* **Columns** follow the call graph, left to right. Cycles are broken first: a depth-first walk, from
  the members nobody calls and then from the rest, each by name, drops every edge that leads back to a
  member on the walk's current path. A member nobody calls (the bridge, an external caller, a member
  with no traffic) is in the first column; every other one in the column after the deepest member
  that calls it. A column's members are sorted by name, top to bottom, and centred on the tallest
  column.
* **Boxes** carry the member's name. **Edges** are cubic curves ending in an arrowhead, labelled and
  coloured by :func:`agentmesh.cli.graph.edge_style`, as in DOT and Mermaid. An edge going right
  leaves its source's right side; one going left (the edge that closes a cycle, or the other half of
  a two-way edge) leaves its source's left side, a little below the middle. The two halves of a
  two-way edge bow apart (right: up, left: down), so they never overlap. An edge over more than one
  column passes around the columns between (over them going right, under them going left), its label
  clear of their boxes. A member calling itself gets a loop above its box. Labels are drawn over the
  edges, on a white box.
* **Text**: every name and label XML-escaped; coordinates rounded to 0.1; the same edges give the
  same bytes, whatever their order. The viewBox is the drawing's bounding box plus a margin.

Text widths are estimated (a monospace font, 0.6 em per character): no font metrics without a renderer.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agentmesh.audit.promview import EdgeView
from agentmesh.cli.graph import edge_style

__all__ = ["columns", "svg"]

SVG_NS = "http://www.w3.org/2000/svg"
FONT = "Menlo, Consolas, 'DejaVu Sans Mono', monospace"
NAME_SIZE, LABEL_SIZE = 13.0, 11.0  # font sizes
CHAR = 0.6  # a monospace character's width, in em
BOX_H, BOX_PAD, BOX_MIN_W = 34.0, 14.0, 72.0
ROW_GAP = 64.0  # between boxes in a column: room for a loop and its label
COLUMN_GAP_MIN, LABEL_ROOM = 96.0, 48.0  # between columns: the widest label plus LABEL_ROOM
PORT = 6.0  # how far off a box's middle the two halves of a two-way edge attach
PAIR_BOW = 18.0  # how far the control points of a two-way edge's curves sit off the straight line
CLEAR = 14.0  # how far an edge passes from the boxes of the columns it crosses
LOOP_W, LOOP_H = 36.0, 46.0
MARGIN = 16.0

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")  # not even escaped
Point = tuple[float, float]
Curve = tuple[Point, Point, Point, Point]  # a cubic Bézier: start, two control points, end
Extent = tuple[float, float, float, float]  # left, top, right, bottom


@dataclass(frozen=True)
class _Box:
    name: str
    x: float  # left
    y: float  # top
    w: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + BOX_H / 2


@dataclass(frozen=True)
class _Arrow:
    source: str
    destination: str
    curve: Curve
    label: str
    color: str
    label_at: Point  # the middle of the label


def svg(members: Iterable[str], rows: Sequence[EdgeView]) -> str:
    """The mesh as an SVG document: ``members`` and the ends of ``rows`` as boxes, ``rows`` as arrows."""
    names = sorted({*members, *(n for e in rows for n in (e.source, e.destination))})
    arcs = sorted({(e.source, e.destination) for e in rows})
    column = columns(names, arcs)
    styled = sorted((e.source, e.destination, *edge_style(e)) for e in rows)
    gap = max([COLUMN_GAP_MIN, *(_width(label, LABEL_SIZE) + LABEL_ROOM for *_, label, _ in styled)])
    boxes = _place(names, column, gap)
    loops = {s for s, d in arcs if s == d}
    extents = [_extent([boxes[n] for n in names if column[n] == c], loops)
               for c in range(max(column.values(), default=-1) + 1)]
    arrows = []
    for s, d, label, color in styled:
        low, high = sorted((column[s], column[d]))
        arrows.append(_arrow(boxes[s], boxes[d], (d, s) in arcs, extents[low + 1:high], label, color))
    return _document(list(boxes.values()), arrows)


def columns(names: Sequence[str], arcs: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Each member's column, 0 the leftmost (the layout rule in the module's docstring)."""
    calls: dict[str, set[str]] = {n: set() for n in names}
    called: set[str] = set()
    for source, destination in arcs:
        if source != destination:
            calls.setdefault(source, set()).add(destination)
            calls.setdefault(destination, set())
            called.add(destination)
    roots = sorted(n for n in calls if n not in called) + sorted(n for n in calls if n in called)
    on_path: set[str] = set()
    done: list[str] = []  # members in the order the walk finished them
    seen: set[str] = set()
    callers: dict[str, list[str]] = {n: [] for n in calls}  # over the edges kept
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        on_path.add(root)
        stack = [(root, iter(sorted(calls[root])))]
        while stack:
            member, todo = stack[-1]
            for callee in todo:
                if callee in on_path:
                    continue  # back to a member on the path: the edge that closes a cycle
                callers[callee].append(member)
                if callee not in seen:
                    seen.add(callee)
                    on_path.add(callee)
                    stack.append((callee, iter(sorted(calls[callee]))))
                    break
            else:
                stack.pop()
                on_path.discard(member)
                done.append(member)
    column: dict[str, int] = {}
    for member in reversed(done):  # callers first: the edges kept go from later to earlier in `done`
        column[member] = max((column[c] + 1 for c in callers[member]), default=0)
    return column


def _width(text: str, size: float) -> float:
    return len(text) * size * CHAR


def _place(names: Sequence[str], column: dict[str, int], gap: float) -> dict[str, _Box]:
    """Boxes by name, column by column left to right (``gap`` apart), each sorted by name top to bottom."""
    if not names:
        return {}
    by_column: list[list[str]] = [[] for _ in range(max(column.values()) + 1)]
    for name in names:
        by_column[column[name]].append(name)
    widths = {n: max(BOX_MIN_W, _width(n, NAME_SIZE) + 2 * BOX_PAD) for n in names}
    tallest = max(len(c) for c in by_column)
    boxes: dict[str, _Box] = {}
    left = 0.0
    for members in by_column:
        span = max(widths[n] for n in members)  # no column is empty
        top = (tallest - len(members)) * (BOX_H + ROW_GAP) / 2
        for row, name in enumerate(sorted(members)):
            boxes[name] = _Box(name, left + (span - widths[name]) / 2, top + row * (BOX_H + ROW_GAP), widths[name])
        left += span + gap
    return boxes


def _extent(boxes: Sequence[_Box], loops: set[str]) -> Extent:
    """What a column's boxes cover, with the loops above them and their labels."""
    loop = LOOP_H * 0.75 + LABEL_SIZE + (LABEL_SIZE + 4) / 2
    return (min(b.x for b in boxes), min(b.y - (loop if b.name in loops else 0.0) for b in boxes),
            max(b.x + b.w for b in boxes), max(b.y + BOX_H for b in boxes))


def _arrow(s: _Box, d: _Box, two_way: bool, between: Sequence[Extent], label: str, color: str) -> _Arrow:
    """The curve from ``s`` to ``d``, around the columns ``between`` them."""
    if s is d:
        top = s.y
        curve = ((s.cx + LOOP_W / 3, top), (s.cx + LOOP_W, top - LOOP_H), (s.cx - LOOP_W, top - LOOP_H),
                 (s.cx - LOOP_W / 3, top))
        return _Arrow(s.name, d.name, curve, label, color, (s.cx, top - LOOP_H * 0.75 - LABEL_SIZE))
    right = d.x > s.x
    port = PORT if not right else -PORT if two_way else 0.0  # going left: below the middle, off any edge going right
    (x0, y0), (x3, y3) = ((s.x + s.w, s.cy + port), (d.x, d.cy + port)) if right else \
        ((s.x, s.cy + port), (d.x + d.w, d.cy + port))
    reach = (x3 - x0) / 2
    # the control points are (x0 + reach, y0 + bow) and (x3 - reach, y3 + bow): y(t) = base(t) + 3 (1 - t) t bow,
    # so the bow that keeps each point of the curve (and the label's half width) clear of a column is one division
    bow = (-PAIR_BOW if right else PAIR_BOW) if two_way else 0.0  # right: up, left: down
    half = (_width(label, LABEL_SIZE) + 6) / 2
    for i in range(1, 32):
        t = i / 32
        x, base, weight = _bezier(x0, x0 + reach, x3 - reach, x3, t), _bezier(y0, y0, y3, y3, t), 3 * (1 - t) * t
        for left, top, right_side, bottom in between:
            if left - half <= x <= right_side + half:
                bow = min(bow, (top - CLEAR - base) / weight) if right else max(bow, (bottom + CLEAR - base) / weight)
    curve = ((x0, y0), (x0 + reach, y0 + bow), (x3 - reach, y3 + bow), (x3, y3))
    return _Arrow(s.name, d.name, curve, label, color, _at(curve, 0.5))


def _bezier(a: float, b: float, c: float, d: float, t: float) -> float:
    u = 1 - t
    return u * u * u * a + 3 * u * u * t * b + 3 * u * t * t * c + t * t * t * d


def _at(curve: Curve, t: float) -> Point:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = curve
    return _bezier(x0, x1, x2, x3, t), _bezier(y0, y1, y2, y3, t)


def _bounds(boxes: Sequence[_Box], arrows: Sequence[_Arrow]) -> Extent:
    """The drawing's bounding box: boxes, curves (sampled) and labels (estimated widths)."""
    xs: list[float] = []
    ys: list[float] = []
    for b in boxes:
        xs += [b.x, b.x + b.w]
        ys += [b.y, b.y + BOX_H]
    for a in arrows:
        for x, y in (_at(a.curve, i / 16) for i in range(17)):
            xs.append(x)
            ys.append(y)
        x, y, w, h = _label_box(a)
        xs += [x, x + w]
        ys += [y, y + h]
    return min(xs), min(ys), max(xs), max(ys)


def _label_box(a: _Arrow) -> tuple[float, float, float, float]:
    """The white box under an edge's label: left, top, width, height."""
    w, h = _width(a.label, LABEL_SIZE) + 6, LABEL_SIZE + 4
    return a.label_at[0] - w / 2, a.label_at[1] - h / 2, w, h


def _text(value: str) -> str:
    """``value`` safe in XML text and in a double-quoted attribute."""
    return html.escape(_NOT_XML.sub("\ufffd", value), quote=True)


def _title(a: _Arrow) -> str:
    return f"{_text(a.source)} \u2192 {_text(a.destination)}"


def _n(value: float) -> str:
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _document(boxes: Sequence[_Box], arrows: Sequence[_Arrow]) -> str:
    if not boxes:
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="{SVG_NS}" viewBox="0 0 160 40" width="160" '
                f'height="40" font-family="{FONT}" font-size="{_n(NAME_SIZE)}">\n<title>agentmesh</title>\n'
                f'<text x="80.0" y="24.0" text-anchor="middle" fill="dimgray">no members</text>\n</svg>\n')
    x0, y0, x1, y1 = _bounds(boxes, arrows)
    dx, dy = MARGIN - x0, MARGIN - y0
    width, height = x1 - x0 + 2 * MARGIN, y1 - y0 + 2 * MARGIN

    def p(point: Point) -> str:
        return f"{_n(point[0] + dx)},{_n(point[1] + dy)}"

    colors = sorted({a.color for a in arrows})
    marker = {c: f"arrow-{i}" for i, c in enumerate(colors)}
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="{SVG_NS}" viewBox="0 0 {_n(width)} {_n(height)}" width="{_n(width)}" '
           f'height="{_n(height)}" font-family="{FONT}">',
           "<title>agentmesh</title>", "<defs>"]
    out += [f'<marker id="{marker[c]}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{_text(c)}"/></marker>' for c in colors]
    out += ["</defs>", f'<rect width="{_n(width)}" height="{_n(height)}" fill="white"/>', '<g class="edges">']
    for a in arrows:
        start, c1, c2, end = a.curve
        out.append(f'<path class="edge" d="M{p(start)} C{p(c1)} {p(c2)} {p(end)}" fill="none" '
                   f'stroke="{_text(a.color)}" stroke-width="1.4" marker-end="url(#{marker[a.color]})">'
                   f'<title>{_title(a)}</title></path>')
    out += ["</g>", '<g class="labels">']  # over every edge: no curve crosses a label
    for a in arrows:
        x, y, w, h = _label_box(a)
        out += [f'<g class="label"><title>{_title(a)}</title>',
                f'<rect x="{_n(x + dx)}" y="{_n(y + dy)}" width="{_n(w)}" height="{_n(h)}" rx="3" fill="white" '
                f'fill-opacity="0.9"/>',
                f'<text x="{_n(a.label_at[0] + dx)}" y="{_n(a.label_at[1] + dy + LABEL_SIZE * 0.35)}" '
                f'text-anchor="middle" font-size="{_n(LABEL_SIZE)}" fill="{_text(a.color)}">{_text(a.label)}</text>'
                f'</g>']
    out += ["</g>", '<g class="nodes">']
    for b in boxes:  # column by column, by name
        out += [f'<g class="node"><title>{_text(b.name)}</title>',
                f'<rect x="{_n(b.x + dx)}" y="{_n(b.y + dy)}" width="{_n(b.w)}" height="{_n(BOX_H)}" rx="6" '
                f'fill="#f4f6f8" stroke="#334155" stroke-width="1.2"/>',
                f'<text x="{_n(b.cx + dx)}" y="{_n(b.cy + dy + NAME_SIZE * 0.35)}" text-anchor="middle" '
                f'font-size="{_n(NAME_SIZE)}" fill="#0f172a">{_text(b.name)}</text></g>']
    out += ["</g>", "</svg>"]
    return "\n".join(out) + "\n"
