"""``agentmesh graph -o svg``: the SVG is valid XML, shows every member and edge with the label and colour DOT
gives it, escapes names, lays columns out in call order (cycles too), and is the same for the same edges; and
the command draws a running mesh's real metrics, to stdout or to ``--out FILE``."""

from __future__ import annotations

import concurrent.futures
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import test_top_graph as base
from meshkit import Mesh, free_port

from agentmesh.audit.promview import EdgeView
from agentmesh.cli.graph import dot
from agentmesh.cli.graphsvg import MARGIN, SVG_NS, columns, svg
from agentmesh.cli.main import main

mesh = base.mesh  # the fixture: a running mesh, 4 allowed calls ingestor -> summarizer, 1 denied back
NS = {"svg": SVG_NS}


def edge(source: str, destination: str, rps: float = 1.0, errors: float = 0.0, denials: float = 0.0) -> EdgeView:
    return EdgeView(source, destination, rps * 60, rps, errors, denials, 0.01, 0.05, "server")


def parse(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{{{SVG_NS}}}svg"
    return root


def nodes(root: ET.Element) -> dict[str, dict[str, float]]:
    """Each node's text -> its box (x, y, width, height)."""
    found = {}
    for g in root.iterfind(".//svg:g[@class='node']", NS):
        rect, text = g.find("svg:rect", NS), g.find("svg:text", NS)
        assert rect is not None and text is not None and text.text is not None
        found[text.text] = {k: float(rect.attrib[k]) for k in ("x", "y", "width", "height")}
    return found


def paths(root: ET.Element) -> dict[str, ET.Element]:
    """Each edge's path by its title ("source → destination")."""
    found = {}
    for path in root.iterfind(".//svg:path[@class='edge']", NS):
        title = path.find("svg:title", NS)
        assert title is not None and title.text is not None
        found[title.text] = path
    return found


def labels(root: ET.Element) -> dict[str, tuple[ET.Element, dict[str, float]]]:
    """Each edge's label text element and its white box, by the edge's title."""
    found = {}
    for g in root.iterfind(".//svg:g[@class='label']", NS):
        title, text, rect = g.find("svg:title", NS), g.find("svg:text", NS), g.find("svg:rect", NS)
        assert title is not None and title.text is not None and text is not None and rect is not None
        found[title.text] = (text, {k: float(rect.attrib[k]) for k in ("x", "y", "width", "height")})
    return found


def curve(path: ET.Element) -> list[tuple[float, float]]:
    """The points of a path's cubic curve (``M x,y C x,y x,y x,y``), 65 of them."""
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", path.attrib["d"])]
    assert len(numbers) == 8 and path.attrib["d"].startswith("M") and " C" in path.attrib["d"]
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = zip(numbers[::2], numbers[1::2], strict=True)
    points = []
    for i in range(65):
        t = i / 64
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t ** 3
        points.append((a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3))
    return points


def centre(box: dict[str, float]) -> tuple[float, float]:
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


CHAIN = [edge("bridge", "ingestor", 2.5), edge("ingestor", "summarizer", 2.4)]


def test_valid_svg_with_a_viewbox_sized_to_the_content() -> None:
    text = svg(["bridge", "ingestor", "summarizer"], CHAIN)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg ')
    root = parse(text)
    x, y, width, height = (float(v) for v in root.attrib["viewBox"].split())
    assert (x, y) == (0, 0) and (float(root.attrib["width"]), float(root.attrib["height"])) == (width, height)
    boxes = nodes(root).values()
    # a straight chain: the boxes are the content, the margin all around
    assert min(b["x"] for b in boxes) == pytest.approx(MARGIN, abs=0.1)
    assert max(b["x"] + b["width"] for b in boxes) == pytest.approx(width - MARGIN, abs=0.1)
    assert min(b["y"] for b in boxes) == pytest.approx(MARGIN, abs=0.1)
    assert max(b["y"] + b["height"] for b in boxes) == pytest.approx(height - MARGIN, abs=0.1)


def test_every_member_is_a_node_and_every_edge_a_path_with_the_dot_label() -> None:
    members = ["control", "bridge", "ingestor", "summarizer"]
    rows = [*CHAIN, edge("summarizer", "ingestor", 0.3, denials=0.25), edge("bridge", "summarizer", 0.123)]
    root = parse(svg(members, rows))
    assert sorted(nodes(root)) == sorted(members)  # "control" too: a member with no traffic
    titles = {f"{e.source} \u2192 {e.destination}" for e in rows}
    assert set(paths(root)) == titles and set(labels(root)) == titles
    in_dot = {f"{s} \u2192 {d}": label for s, d, label in re.findall(r'"(\S+)" -> "(\S+)" \[label="([^"]+)"',
                                                                     dot(members, rows))}
    assert in_dot.keys() == titles
    for title, label in in_dot.items():
        assert labels(root)[title][0].text == label
    assert labels(root)["summarizer \u2192 ingestor"][0].text == "0.30 rps, 25% denied"
    assert labels(root)["bridge \u2192 summarizer"][0].text == "0.12 rps"


def test_edges_with_errors_are_red_with_denials_only_orange() -> None:
    rows = [edge("a", "b"), edge("a", "c", errors=0.1), edge("a", "d", denials=0.5),
            edge("a", "e", errors=0.1, denials=0.5)]
    root = parse(svg([], rows))
    markers = {m.attrib["id"]: m.find("svg:path", NS) for m in root.iterfind(".//svg:marker", NS)}
    expected = {"b": "dimgray", "c": "red", "d": "orange", "e": "red"}
    for destination, color in expected.items():
        path = paths(root)[f"a \u2192 {destination}"]
        assert path.attrib["stroke"] == color
        head = markers[path.attrib["marker-end"].removeprefix("url(#").removesuffix(")")]
        assert head is not None and head.attrib["fill"] == color
        assert labels(root)[f"a \u2192 {destination}"][0].attrib["fill"] == color
    assert "color=red" in dot([], rows) and "color=orange" in dot([], rows)  # one style for both formats


def test_names_are_escaped() -> None:
    odd = ['a<&>b', 'q"uote', "it's", "bell\x07"]
    rows = [edge(odd[0], odd[1]), edge(odd[1], odd[2], errors=0.5), edge(odd[2], odd[3])]
    text = svg([], rows)
    assert "<&>" not in text and "\x07" not in text
    root = parse(text)
    assert sorted(nodes(root)) == sorted(['a<&>b', 'q"uote', "it's", "bell\ufffd"])
    assert set(paths(root)) == {'a<&>b \u2192 q"uote', "q\"uote \u2192 it's", "it's \u2192 bell\ufffd"}


def test_columns_follow_the_calls_and_a_column_is_sorted_by_name() -> None:
    rows = [*CHAIN, edge("bridge", "summarizer"), edge("bridge", "auditor"), edge("ingestor", "auditor"),
            edge("bridge", "cache")]
    root = parse(svg(["external"], rows))
    boxes = nodes(root)
    x = {name: centre(box)[0] for name, box in boxes.items()}
    y = {name: centre(box)[1] for name, box in boxes.items()}
    assert x["bridge"] < x["ingestor"] < x["summarizer"]  # after the deepest caller, not the first
    assert x["bridge"] == pytest.approx(x["external"]) and y["bridge"] < y["external"]  # nobody calls them
    assert x["ingestor"] == pytest.approx(x["cache"]) and y["cache"] < y["ingestor"]
    assert x["auditor"] == pytest.approx(x["summarizer"]) and y["auditor"] < y["summarizer"]


def test_a_long_edge_goes_around_the_columns_between() -> None:
    rows = [*CHAIN, edge("bridge", "summarizer", 0.2), edge("summarizer", "bridge", 0.1, errors=1.0)]
    root = parse(svg([], rows))
    middle = nodes(root)["ingestor"]
    over, under = paths(root)["bridge \u2192 summarizer"], paths(root)["summarizer \u2192 bridge"]
    above = [py for px, py in curve(over) if middle["x"] <= px <= middle["x"] + middle["width"]]
    below = [py for px, py in curve(under) if middle["x"] <= px <= middle["x"] + middle["width"]]
    assert above and max(above) < middle["y"]
    assert below and min(below) > middle["y"] + middle["height"]
    for title in ("bridge \u2192 summarizer", "summarizer \u2192 bridge"):
        assert not overlap(labels(root)[title][1], middle)


def test_two_way_edges_and_self_calls_stay_apart() -> None:
    rows = [edge("ingestor", "summarizer", 2.0), edge("summarizer", "ingestor", 0.5, denials=1.0),
            edge("summarizer", "summarizer", 0.1)]
    root = parse(svg([], rows))
    forth, back = paths(root)["ingestor \u2192 summarizer"], paths(root)["summarizer \u2192 ingestor"]
    # the two halves never meet: between the boxes, the one going right is always above the one going left
    ingestor, summarizer = nodes(root)["ingestor"], nodes(root)["summarizer"]
    top = {round(px): py for px, py in curve(forth)}
    bottom = {round(px): py for px, py in curve(back)}
    shared = set(top) & set(bottom)
    assert len(shared) > 10 and all(top[px] < bottom[px] for px in shared)
    assert not overlap(labels(root)["ingestor \u2192 summarizer"][1], labels(root)["summarizer \u2192 ingestor"][1])
    assert ingestor["x"] + ingestor["width"] <= min(px for px, _ in curve(forth))
    assert max(px for px, _ in curve(forth)) <= summarizer["x"]
    loop = curve(paths(root)["summarizer \u2192 summarizer"])
    assert loop[0][1] == loop[-1][1] == summarizer["y"]  # leaves and enters the box's top
    assert min(py for _, py in loop) < summarizer["y"] - 20
    assert labels(root)["summarizer \u2192 summarizer"][1]["y"] + 15 <= summarizer["y"]


def test_a_cycle_is_broken_by_name_and_at_its_entry() -> None:
    ring = [("a", "b"), ("b", "c"), ("c", "a")]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a walk that does not end fails here, not hangs
        assert pool.submit(columns, ["a", "b", "c"], ring).result(timeout=10) == {"a": 0, "b": 1, "c": 2}
    assert columns(["a", "b", "c", "x"], [*ring, ("x", "b")]) == {"x": 0, "b": 1, "c": 2, "a": 3}
    root = parse(svg([], [edge(s, d) for s, d in ring]))
    x = {name: centre(box)[0] for name, box in nodes(root).items()}
    assert x["a"] < x["b"] < x["c"] and set(paths(root)) == {"a \u2192 b", "b \u2192 c", "c \u2192 a"}


def test_the_same_edges_give_the_same_bytes() -> None:
    members = ["control", "bridge", "ingestor", "summarizer"]
    rows = [*CHAIN, edge("summarizer", "ingestor", 0.3, denials=1.0), edge("summarizer", "summarizer", 0.1)]
    first = svg(members, rows)
    assert svg(members, rows) == first
    assert svg(list(reversed(members)), list(reversed(rows))) == first
    assert svg(members, [*rows[1:], edge("bridge", "ingestor", 2.6)]) != first  # not a constant


def test_no_members_is_still_a_picture() -> None:
    root = parse(svg([], []))
    assert nodes(root) == {} and "no members" in "".join(root.itertext())


def test_out_that_cannot_be_written_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no-such-dir" / "mesh.svg"
    code = main(["graph", "--endpoint", f"127.0.0.1:{free_port()}", "--timeout", "1", "-o", "svg",
                 "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and not target.exists()
    assert f"agentmesh: error: {target}: No such file or directory" in err.splitlines()


async def test_graph_svg_of_a_running_mesh(mesh: Mesh, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = await base.run(capsys, "graph", base.config_path(mesh), "-o", "svg")
    assert code == 0
    root = parse(out)
    assert set(base.MEMBERS) <= set(nodes(root))
    assert set(paths(root)) == {"ingestor \u2192 summarizer", "summarizer \u2192 ingestor"}
    assert paths(root)["summarizer \u2192 ingestor"].attrib["stroke"] == "orange"
    denied = labels(root)["summarizer \u2192 ingestor"][0].text
    assert denied is not None and denied.endswith("rps, 100% denied")
    x = {name: centre(box)[0] for name, box in nodes(root).items()}
    assert x["ingestor"] < x["summarizer"]  # the ingestor calls first (by name: the cycle starts there)

    target = tmp_path / "mesh.svg"
    code, out = await base.run(capsys, "graph", base.config_path(mesh), "-o", "svg", "--out", str(target))
    assert code == 0 and out == ""
    assert set(paths(parse(target.read_text(encoding="utf-8")))) == {"ingestor \u2192 summarizer",
                                                                     "summarizer \u2192 ingestor"}
