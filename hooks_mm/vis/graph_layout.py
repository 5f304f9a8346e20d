"""Where each node of a circuit graph goes: the layout shared by the HTML view and the matplotlib figure.

Rows from the bottom: the input nodes (each image drawn as a panel with its patch grid, a cell node per cell when
the graph has cell nodes; text spans as boxes), then per layer one row of attention heads and one row for the MLP,
the logit / metric node on top. Coordinates are pixels of the HTML view (y down); the figure flips them.

Example::

    view = graph_view(graph)             # plain numpy view of any circuit graph value
    lay = layout(view)                   # lay.boxes[i] = (x, y, w, h) of node i, lay.panels: image panels
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from hooks_mm.vis.common import to_numpy

LEFT = 78  # row labels
WIDTH = 980
ROW_H = 64
PANEL = 120  # image panel side (pixels)
TEXT_W, TEXT_H = 128, 26


@dataclass
class ViewNode:
    """The fields of one graph node the views use (read from the graph value's node)."""

    id: str
    kind: str  # "input" | "head" | "mlp" | "logit" (anything else: drawn on the layer's attention row)
    layer: int
    label: str
    head: int | None = None
    modality: str | None = None
    image: int | None = None
    tile: int | None = None
    row: int | None = None
    col: int | None = None


@dataclass
class GraphView:
    """A circuit graph as plain arrays: nodes, edges ``src -> dst`` (node indices) with ``scores``."""

    nodes: list[ViewNode]
    src: Int[np.ndarray, " E"]
    dst: Int[np.ndarray, " E"]
    scores: Float[np.ndarray, " E"]
    node_scores: Float[np.ndarray, " N"] | None
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _opt_int(v: Any) -> int | None:
    return None if v is None or (isinstance(v, (int, np.integer)) and v < 0) else int(v)


def graph_view(graph: Any) -> GraphView:
    """Read a circuit graph value (``nodes``, ``src``, ``dst``, ``scores``, ``node_scores``) into a
    :class:`GraphView`; a wrong value is refused by name."""
    if isinstance(graph, GraphView):
        return graph
    missing = [k for k in ("nodes", "src", "dst", "scores") if _get(graph, k) is None]
    if missing:
        raise TypeError(
            f"{type(graph).__name__} is not a circuit graph (no {', '.join(missing)}): pass the graph value that "
            "hooks_mm's EAP returns (nodes, src, dst, scores)."
        )
    nodes = []
    for n in _get(graph, "nodes"):
        nid = _get(n, "id")
        if not isinstance(nid, str):
            raise TypeError(f"graph node {n!r} has no string id: pass the graph value that hooks_mm's EAP returns.")
        kind = str(_get(n, "kind", "input"))
        nodes.append(
            ViewNode(
                id=nid,
                kind=kind,
                layer=int(_get(n, "layer", -1)),
                label=str(_get(n, "label", None) or nid),
                head=_opt_int(_get(n, "head")),
                modality=_get(n, "modality"),
                image=_opt_int(_get(n, "image")),
                tile=_opt_int(_get(n, "tile")),
                row=_opt_int(_get(n, "row")),
                col=_opt_int(_get(n, "col")),
            )
        )
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"graph node ids repeat ({dup[:5]}): each node needs its own id.")
    src, dst = (to_numpy(_get(graph, k)).astype(np.int64).ravel() for k in ("src", "dst"))
    scores = to_numpy(_get(graph, "scores")).astype(float).ravel()
    if not len(src) == len(dst) == len(scores):
        raise ValueError(f"graph edges disagree: {len(src)} src, {len(dst)} dst, {len(scores)} scores.")
    if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= len(nodes)):
        raise ValueError(f"graph edges point outside its {len(nodes)} nodes: src / dst must be node indices.")
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ValueError(
            f"{bad} edge scores are NaN or infinite: the attribution failed (check the metric is finite on the "
            "clean and corrupted inputs) - a picture of them would be wrong."
        )
    ns = _get(graph, "node_scores")
    node_scores = None if ns is None else to_numpy(ns).astype(float).ravel()
    if node_scores is not None and node_scores.shape != (len(nodes),):
        raise ValueError(f"node_scores has {node_scores.shape[0]} values for {len(nodes)} nodes.")
    meta = dict(_get(graph, "meta", None) or {})
    title = f"{_get(graph, 'method', '') or ''} {_get(graph, 'metric', '') or ''}".strip()
    return GraphView(nodes, src, dst, scores, node_scores, title, meta)


@dataclass
class Panel:
    """One image (tile) panel of the input row: the picture with its ``rows x cols`` patch grid."""

    image: int
    tile: int | None
    box: tuple[float, float, float, float]  # x, y, w, h
    rows: int
    cols: int
    node: int | None  # the node the whole panel stands for (image / tile node), None when it holds cell nodes


@dataclass
class Layout:
    """Pixel boxes (x, y, w, h) of every node, the image panels and the row labels ``(text, y)``."""

    boxes: list[tuple[float, float, float, float]]
    shapes: list[str]  # "circle" | "rect" | "cell"
    panels: list[Panel]
    rows: list[tuple[str, float]]
    width: float
    height: float


def _rows(view: GraphView) -> list[tuple[str, list[int]]]:
    """Row name and its nodes, top (logit) to bottom (inputs)."""
    layers = sorted({n.layer for n in view.nodes if n.kind not in ("input", "logit")})
    out = [("logit", [i for i, n in enumerate(view.nodes) if n.kind == "logit"])]
    for l in reversed(layers):
        out.append((f"L{l} mlp", [i for i, n in enumerate(view.nodes) if n.layer == l and n.kind == "mlp"]))
        out.append((f"L{l} attn", [i for i, n in enumerate(view.nodes) if n.layer == l and n.kind not in ("mlp",)]))
    out.append(("inputs", [i for i, n in enumerate(view.nodes) if n.kind == "input"]))
    return [(name, ids) for name, ids in out if ids]


def _input_groups(view: GraphView, ids: list[int]) -> list[tuple[tuple[int, int | None] | None, list[int]]]:
    """Input nodes grouped: one group per (image, tile) panel, one per other input node; graph order."""
    groups: list[tuple[tuple[int, int | None] | None, list[int]]] = []
    where: dict[tuple[int, int | None], int] = {}
    finer = {view.nodes[i].image for i in ids if view.nodes[i].tile is not None or view.nodes[i].row is not None}
    for i in ids:
        n = view.nodes[i]
        whole = n.tile is None and n.row is None
        # text spans, video frames, audio windows, an image's separators next to its cells / tiles: boxes
        if n.image is None or n.modality not in (None, "image") or (whole and n.image in finer):
            groups.append((None, [i]))
            continue
        key = (n.image, n.tile if n.row is not None or n.tile is not None else None)
        if key not in where:
            where[key] = len(groups)
            groups.append((key, []))
        groups[where[key]][1].append(i)
    return groups


def layout(view: GraphView) -> Layout:
    """Place every node of ``view`` (see the module docstring)."""
    n = len(view.nodes)
    boxes: list[tuple[float, float, float, float]] = [(0.0, 0.0, 0.0, 0.0)] * n
    shapes = ["rect"] * n
    panels: list[Panel] = []
    row_labels = []
    rows = _rows(view)
    heights = [PANEL + 24 if name == "inputs" else ROW_H for name, _ in rows]
    y = 16.0
    inputs = next((ids for name, ids in rows if name == "inputs"), [])
    groups = _input_groups(view, inputs)
    widths = [PANEL if key is not None else TEXT_W for key, _ in groups]
    inner = max(WIDTH - LEFT - 16, sum(widths) + 12.0 * (len(groups) + 1))  # wide enough for every input
    for (name, ids), h in zip(rows, heights):
        mid = y + h / 2
        row_labels.append((name, mid))
        if name == "inputs":
            gap = (inner - sum(widths)) / (len(groups) + 1)
            x = LEFT + gap
            for (key, members), w in zip(groups, widths):
                if key is None:
                    boxes[members[0]] = (x, mid - TEXT_H / 2, TEXT_W, TEXT_H)
                else:
                    cells = [i for i in members if view.nodes[i].row is not None and view.nodes[i].col is not None]
                    nr = max((view.nodes[i].row for i in cells), default=0) + 1
                    nc = max((view.nodes[i].col for i in cells), default=0) + 1
                    pw, ph = (PANEL, PANEL * nr / nc) if nc >= nr else (PANEL * nc / nr, PANEL)
                    px, py = x + (PANEL - pw) / 2, mid - ph / 2
                    whole = [i for i in members if i not in cells]
                    panels.append(Panel(key[0], key[1], (px, py, pw, ph), nr, nc, whole[0] if whole else None))
                    for i in whole:
                        boxes[i] = (px, py, pw, ph)
                    for i in cells:
                        c = view.nodes[i]
                        boxes[i] = (px + c.col * pw / nc, py + c.row * ph / nr, pw / nc, ph / nr)
                        shapes[i] = "cell"
                x += w + gap
        else:
            step = inner / max(len(ids), 1)
            for k, i in enumerate(ids):
                cx = LEFT + step * (k + 0.5)
                if view.nodes[i].kind in ("head",):
                    r = max(3.0, min(11.0, step / 2.6))
                    boxes[i] = (cx - r, mid - r, 2 * r, 2 * r)
                    shapes[i] = "circle"
                else:
                    w = min(128.0, max(24.0, step * 0.8))
                    boxes[i] = (cx - w / 2, mid - 12, w, 24)
        y += h
    return Layout(boxes, shapes, panels, row_labels, LEFT + inner + 16, y + 12)


def edge_order(view: GraphView) -> Int[np.ndarray, " E"]:
    """Edge indices by decreasing |score| (ties: graph order)."""
    return np.argsort(-np.abs(view.scores), kind="stable")


def symmetric_max(values: np.ndarray) -> float:
    """max |value| (1 when there is none or all are 0): the half-width of a diverging scale centred at 0."""
    m = float(np.abs(values).max()) if len(values) else 0.0
    return m if m > 0 and math.isfinite(m) else 1.0


def edge_path(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """Cubic Bezier control points from the top of box ``a`` (source, below) to the bottom of box ``b``."""
    x0, y0 = a[0] + a[2] / 2, a[1]
    x1, y1 = b[0] + b[2] / 2, b[1] + b[3]
    if y0 <= y1:  # same row (or an edge going down): leave from the side
        y0 = a[1] + a[3] / 2
        y1 = b[1] + b[3] / 2
    dy = (y0 - y1) * 0.45 or 20.0
    bulge = 0.0
    if abs(x0 - x1) < 8 and y0 - y1 > 1.5 * ROW_H:  # same column, rows apart: bend around the nodes between
        bulge = min(60.0, 0.25 * (y0 - y1))
    return [(x0, y0), (x0 + bulge, y0 - dy), (x1 + bulge, y1 + dy), (x1, y1)]


def short(text: str, n: int = 19) -> str:
    """``text`` cut to ``n`` characters (an ellipsis marks the cut): node captions; hover / details show it all."""
    return text if len(text) <= n else text[: n - 1] + "\u2026"
