"""Pictures of a circuit graph: an offline interactive HTML view and a matplotlib figure, same layout.

Rows from the bottom: the inputs (each image drawn as the image with its patch grid; one node per cell when the
graph has cell nodes), per layer a row of attention heads and a row for the MLP, the logit / metric node on top.
Edges are drawn with width ``|score| / max |score|`` and a diverging colour (``RdBu_r``, 0 at the centre: red
helps the metric, blue hurts it); nodes are coloured by their node score on their own diverging scale.

HTML (:func:`graph_html`): hover a node or edge for its numbers, click a node for its details (score, its
strongest incoming and outgoing edges, the patch heatmap of the edges from the image cells into it when the graph
has cell nodes, and any HTML you attach with ``details={node_id: view}``), and choose the edges shown with the
top-k slider and the |score| threshold. Self-contained: no request leaves the machine; displays in Jupyter and
``.save(path)`` writes a page. Labels are text everywhere (a token ``<script>`` shows as ``<script>``).

Example::

    view = graph_html(graph, images=[img], k=30)    # in Jupyter: display `view`
    view.save("circuit.html")
    graph_figure(graph, images=[img], k=30).savefig("circuit.pdf")
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hooks_mm.vis.common import css_colors, png_data_uri
from hooks_mm.vis.graph_layout import GraphView, Layout, edge_order, edge_path, graph_view, layout, short, symmetric_max
from hooks_mm.vis.html import STYLE, js_literal, page

CMAP = "RdBu_r"
GRAPH_STYLE = (
    ".hmm-graph svg{display:block;font:11px system-ui,sans-serif}"
    ".hmm-graph .hmm-edge{fill:none;stroke-linecap:round}"
    ".hmm-graph .hmm-node{cursor:pointer;stroke:#333;stroke-width:0.8}"
    ".hmm-graph .hmm-node.hmm-cellnode{stroke:rgba(0,0,0,.25)}"
    ".hmm-graph .hmm-node.hmm-picked{stroke:#000;stroke-width:2.5}"
    ".hmm-graph .hmm-graph-controls{font-size:12px;color:#444;display:flex;gap:14px;align-items:center}"
    ".hmm-graph .hmm-graph-details{font-size:12px;border-top:1px solid #eee;margin-top:6px;padding-top:6px}"
    ".hmm-graph .hmm-graph-details table{border-collapse:collapse}"
    ".hmm-graph .hmm-graph-details td{padding:1px 8px 1px 0}"
)


def _validate(view: GraphView, k: Any, threshold: Any, images: Any, details: Any) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k={k!r}: pass the number of strongest edges to show (an int >= 0).")
    if threshold is not None and (not isinstance(threshold, (int, float)) or not threshold >= 0):
        raise ValueError(f"threshold={threshold!r}: it is on |score|, pass a number >= 0 (or None).")
    wanted = sorted({n.image for n in view.nodes if n.image is not None})
    if images is not None:
        if not isinstance(images, Sequence) or any(not hasattr(im, "convert") for im in images):
            raise TypeError("images: pass a list of PIL images, one per image index of the graph's row.")
        if wanted and len(images) <= wanted[-1]:
            raise ValueError(
                f"the graph has nodes of images {wanted} but images= holds {len(images)}: pass one PIL image per "
                "image index of the row the graph was built on (row 0), in order."
            )
    if details is not None:
        if not isinstance(details, Mapping):
            raise TypeError("details: pass a dict {node_id: HTML string or a view with _repr_html_}.")
        ids = {n.id for n in view.nodes}
        unknown = [key for key in details if key not in ids]
        if unknown:
            raise ValueError(f"details for unknown node ids {unknown[:5]}: use ids of graph.nodes (e.g. 'L0.H1').")
        odd = [key for key, item in details.items() if not isinstance(item, str) and not hasattr(item, "_repr_html_")]
        if odd:
            raise TypeError(f"details for {odd[:5]}: give an HTML string or a view with _repr_html_ for each node.")


def _kept(view: GraphView, max_edges: int) -> np.ndarray:
    if not isinstance(max_edges, (int, np.integer)) or max_edges < 1:
        raise ValueError(f"max_edges={max_edges!r}: pass a positive int (edges beyond it are left out of the page).")
    return edge_order(view)[:max_edges]


def _ink(score: float, nmax: float) -> str:
    """Caption colour on a node of this score: white on the dark ends of the scale."""
    return "#fff" if abs(score) > 0.6 * nmax else "#000"


def _tiled(lay: Layout, image: int) -> bool:
    return sum(p.image == image for p in lay.panels) > 1


def _tip(view: GraphView, i: int) -> str:
    n = view.nodes[i]
    score = "" if view.node_scores is None else f" \u00b7 score {view.node_scores[i]:.4g}"
    return f"{n.label} [{n.id}]{score}"


@dataclass
class GraphHTML:
    """An offline HTML circuit graph (see :func:`graph_html`); ``html`` is the fragment."""

    html: str
    title: str = ""

    def _repr_html_(self) -> str:
        return f"<style>{STYLE}{GRAPH_STYLE}</style>{self.html}"

    def __repr__(self) -> str:
        return f"GraphHTML({self.title!r}, {len(self.html)} chars of HTML)"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(page([self], title=self.title or "circuit graph"), encoding="utf-8")
        return path


def _svg(view: GraphView, lay: Layout, kept: np.ndarray, k: int, threshold: float | None, images: Any) -> str:
    emax = symmetric_max(view.scores[kept])
    ecol = css_colors(view.scores[kept], -emax, emax, CMAP, alpha=0.85)
    ns = view.node_scores if view.node_scores is not None else np.zeros(len(view.nodes))
    nmax = symmetric_max(ns)
    ncol = css_colors(ns, -nmax, nmax, CMAP)
    nfaint = css_colors(ns, -nmax, nmax, CMAP, alpha=0.55)
    parts = [f'<svg class="hmm-graph-svg" width="{lay.width:.0f}" height="{lay.height:.0f}">']
    for name, y in lay.rows:
        parts.append(f'<text x="6" y="{y + 4:.1f}" fill="#666">{html.escape(name)}</text>')
    for p in lay.panels:
        x, y, w, h = p.box
        if images is not None:
            thumb = images[p.image].copy()
            thumb.thumbnail((2 * int(w), 2 * int(h)))
            parts.append(
                f'<image href="{png_data_uri(thumb)}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                'preserveAspectRatio="none"/>'
            )
        grid = [f"M{x + w * c / p.cols:.1f},{y:.1f}v{h:.1f}" for c in range(p.cols + 1)]
        grid += [f"M{x:.1f},{y + h * r / p.rows:.1f}h{w:.1f}" for r in range(p.rows + 1)]
        parts.append(f'<path d="{"".join(grid)}" stroke="#888" stroke-width="0.6" fill="none"/>')
        tile = "" if p.tile is None or not _tiled(lay, p.image) else f" tile {p.tile}"
        parts.append(f'<text x="{x:.1f}" y="{y + h + 12:.1f}" fill="#444">image {p.image}{tile}</text>')
    parts.append('<g class="hmm-edges">')
    for rank, e in reversed(list(enumerate(kept))):  # the strongest drawn last, on top
        s, d, v = int(view.src[e]), int(view.dst[e]), float(view.scores[e])
        pts = edge_path(lay.boxes[s], lay.boxes[d])
        path = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}C" + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts[1:])
        width = 0.4 + 5.6 * abs(v) / emax
        shown = rank < k and (threshold is None or abs(v) >= threshold)
        tip = f"{view.nodes[s].label} \u2192 {view.nodes[d].label}: {v:.4g}"
        parts.append(
            f'<path class="hmm-edge" d="{path}" stroke="{ecol[rank]}" stroke-width="{width:.3f}" '
            f'data-rank="{rank}" data-score="{v:.6g}" data-src="{html.escape(view.nodes[s].id)}" '
            f'data-dst="{html.escape(view.nodes[d].id)}"{"" if shown else " display=none"}>'
            f"<title>{html.escape(tip)}</title></path>"
        )
    parts.append('</g><g class="hmm-nodes">')
    for i, (n, (x, y, w, h), shape) in enumerate(zip(view.nodes, lay.boxes, lay.shapes)):
        common = (
            f'class="hmm-node{" hmm-cellnode" if shape == "cell" else ""}" data-i="{i}" data-id="{html.escape(n.id)}"'
        )
        tip = f"<title>{html.escape(_tip(view, i))}</title>"
        if shape == "circle":
            parts.append(f'<circle {common} cx="{x + w / 2:.1f}" cy="{y + h / 2:.1f}" r="{w / 2:.1f}" ')
            parts.append(f'fill="{ncol[i]}">{tip}</circle>')
        else:
            fill = nfaint[i] if shape == "cell" or any(p.node == i for p in lay.panels) else ncol[i]
            rx = 0 if shape == "cell" else 4
            parts.append(f'<rect {common} x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" ')
            parts.append(f'fill="{fill}">{tip}</rect>')
        if shape != "cell" and not any(p.node == i for p in lay.panels):
            text = f"H{n.head}" if n.kind == "head" and n.head is not None else short(n.label)
            parts.append(
                f'<text x="{x + w / 2:.1f}" y="{y + h / 2 + 3.5:.1f}" text-anchor="middle" pointer-events="none" '
                f'fill="{_ink(ns[i], nmax)}" class="hmm-node-label">{html.escape(text)}</text>'
            )
    parts.append("</g></svg>")
    return "".join(parts)


def graph_html(
    graph: Any,
    *,
    images: Sequence[Any] | None = None,
    k: int = 50,
    threshold: float | None = None,
    max_edges: int = 2000,
    details: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> GraphHTML:
    """An offline interactive view of ``graph`` (a circuit graph value: see the module docstring).

    ``images``: PIL images drawn under the patch grids, one per image index (a graph's image node ``k`` stands
    for the k-th image of every row, its scores summed over the rows: pass row 0's images as representatives).
    ``k``: the strongest edges shown at first (the slider changes it), ``threshold``: hide edges with ``|score|``
    below it. Only the ``max_edges`` strongest edges go into the page (the page says how many there are).
    ``details``: HTML per node id shown when the node is clicked (e.g. ``{"L1.H0": patch_heatmap_html(attn,
    layout, row=0)}``).
    """
    view = graph_view(graph)
    _validate(view, k, threshold, images, details)
    kept = _kept(view, max_edges)
    lay = layout(view)
    uid = "hmm-graph-" + uuid.uuid4().hex[:10]
    title = view.title if title is None else title
    extra = {}
    for key, item in (details or {}).items():
        extra[key] = item if isinstance(item, str) else item._repr_html_()
    data = {
        "nodes": [
            {
                "id": n.id,
                "label": n.label,
                "kind": n.kind,
                "layer": n.layer,
                "head": n.head,
                "image": n.image,
                "tile": n.tile,
                "row": n.row,
                "col": n.col,
            }
            for n in view.nodes
        ],
        "node_scores": None if view.node_scores is None else view.node_scores,
        "edges": [[int(view.src[e]), int(view.dst[e]), float(view.scores[e])] for e in kept],
        "palette": css_colors(np.linspace(-1, 1, 65), -1, 1, CMAP),
        "emax": symmetric_max(view.scores[kept]),
    }
    note = f"{len(kept)} of {len(view.scores)} edges in this page" if len(kept) < len(view.scores) else ""
    bar = ",".join(data["palette"][::8])
    controls = (
        f'<div class="hmm-graph-controls">top-k <input type="range" class="hmm-graph-k" min="0" max="{len(kept)}" '
        f'value="{min(k, len(kept))}"><span class="hmm-graph-kval"></span>'
        f'|score| &ge; <input type="number" class="hmm-graph-thr" min="0" step="any" '
        f'value="{"" if threshold is None else threshold}" style="width:7em">'
        f'<span class="hmm-graph-count"></span><span>{html.escape(note)}</span>'
        f'<span>edge score {-data["emax"]:.3g}<span class="hmm-bar" '
        f'style="background:linear-gradient(to right,{bar})"></span>{data["emax"]:.3g}</span></div>'
    )
    head = f'<div class="hmm-title">{html.escape(title)}</div>' if title else ""
    hidden = "".join(
        f'<div class="hmm-graph-extra" data-id="{html.escape(key)}" hidden>{value}</div>'
        for key, value in extra.items()
    )
    body = (
        f'<div class="hmm-vis hmm-graph" id="{uid}">{head}{controls}{_svg(view, lay, kept, k, threshold, images)}'
        f'<div class="hmm-graph-details">click a node for its details</div>{hidden}'
        f"<script>({_JS})({js_literal(uid)}, {js_literal(data)});</script></div>"
    )
    return GraphHTML(body, title)


_JS = r"""
function(uid, D) {
  const root = document.getElementById(uid);
  const kIn = root.querySelector('.hmm-graph-k'), tIn = root.querySelector('.hmm-graph-thr');
  const edges = [...root.querySelectorAll('.hmm-edge')];
  const el = (tag, text, attrs) => { const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    Object.entries(attrs || {}).forEach(([a, v]) => e.setAttribute(a, v)); return e; };
  const fmt = v => (Math.abs(v) >= 1e-3 || v === 0) ? v.toPrecision(4).replace(/\.?0+$/, '') : v.toExponential(3);
  const color = v => D.palette[Math.max(0, Math.min(64, Math.round((v / D.emax + 1) * 32)))];
  function filter() {
    const k = +kIn.value, t = tIn.value === '' ? 0 : +tIn.value;
    let n = 0;
    edges.forEach(e => { const on = +e.dataset.rank < k && Math.abs(+e.dataset.score) >= t;
      if (on) { e.removeAttribute('display'); n++; } else e.setAttribute('display', 'none'); });
    root.querySelector('.hmm-graph-kval').textContent = k;
    root.querySelector('.hmm-graph-count').textContent = n + ' edges shown';
  }
  function edgeTable(title, list, end) {
    const box = el('div'); box.appendChild(el('b', title));
    const tab = el('table');
    list.slice(0, 8).forEach(([s, d, v]) => { const tr = el('tr');
      tr.appendChild(el('td', D.nodes[end === 'src' ? s : d].label)); tr.appendChild(el('td', fmt(v)));
      tab.appendChild(tr); });
    if (!list.length) box.appendChild(el('div', 'none in this page')); else box.appendChild(tab);
    return box;
  }
  function cellMap(i) {
    const into = D.edges.filter(([s, d]) => d === i && D.nodes[s].row != null && D.nodes[s].image != null);
    if (!into.length) return null;
    const wrap = el('div'); wrap.appendChild(el('b', 'edges from the image cells into this node'));
    const panels = {};
    into.forEach(([s, d, v]) => { const n = D.nodes[s], key = n.image + '/' + n.tile;
      (panels[key] = panels[key] || {image: n.image, tile: n.tile, cells: []}).cells.push([n.row, n.col, v]); });
    Object.values(panels).forEach(p => {
      const R = Math.max(...p.cells.map(c => c[0])) + 1, C = Math.max(...p.cells.map(c => c[1])) + 1;
      const cap = el('div', 'image ' + p.image + (p.tile == null ? '' : ' tile ' + p.tile), {class: 'hmm-panel-title'});
      const g = el('div', undefined, {class: 'hmm-grid hmm-graph-cellmap',
        style: `grid-template-columns:repeat(${C},1fr);width:${14 * C}px;height:${14 * R}px`});
      const cells = Array.from({length: R * C},
        () => el('div', undefined, {class: 'hmm-cell', style: 'background:#fff'}));
      p.cells.forEach(([r, c, v]) => { const x = cells[r * C + c]; x.style.background = color(v);
        x.setAttribute('title', `(${r}, ${c}) ${fmt(v)}`); x.dataset.v = v; });
      cells.forEach(x => g.appendChild(x));
      const panel = el('div', undefined, {class: 'hmm-panel'}); panel.appendChild(cap); panel.appendChild(g);
      wrap.appendChild(panel);
    });
    return wrap;
  }
  function pick(i) {
    root.querySelectorAll('.hmm-picked').forEach(e => e.classList.remove('hmm-picked'));
    root.querySelectorAll(`.hmm-node[data-i="${i}"]`).forEach(e => e.classList.add('hmm-picked'));
    const n = D.nodes[i], box = root.querySelector('.hmm-graph-details');
    box.replaceChildren();
    box.appendChild(el('div', n.label + ' [' + n.id + ']',
      {class: 'hmm-graph-picked-label', style: 'font-weight:600'}));
    const facts = [['kind', n.kind], ['layer', n.layer]];
    if (n.head != null) facts.push(['head', n.head]);
    if (D.node_scores) facts.push(['node score', fmt(D.node_scores[i])]);
    box.appendChild(el('div', facts.map(([a, b]) => a + ': ' + b).join(' \u00b7 ')));
    const by = l => l.sort((a, b) => Math.abs(b[2]) - Math.abs(a[2]));
    const row = el('div', undefined, {style: 'display:flex;gap:24px;align-items:flex-start'});
    row.appendChild(edgeTable('strongest edges in', by(D.edges.filter(e => e[1] === i)), 'src'));
    row.appendChild(edgeTable('strongest edges out', by(D.edges.filter(e => e[0] === i)), 'dst'));
    const map = cellMap(i); if (map) row.appendChild(map);
    box.appendChild(row);
    root.querySelectorAll('.hmm-graph-extra').forEach(x => { x.hidden = x.dataset.id !== n.id; });
  }
  kIn.addEventListener('input', filter); tIn.addEventListener('input', filter);
  root.querySelectorAll('.hmm-node').forEach(e => e.addEventListener('click', () => pick(+e.dataset.i)));
  filter();
}
"""


def graph_figure(
    graph: Any,
    *,
    images: Sequence[Any] | None = None,
    k: int = 50,
    threshold: float | None = None,
    title: str | None = None,
    scale: float = 0.01,
):
    """A matplotlib Figure of ``graph`` in the layout of :func:`graph_html` (static: the ``k`` strongest edges
    with ``|score| >= threshold``). Each edge is a patch with gid ``"edge:SRC->DST"``, each node ``"node:ID"``.
    Labels are plain text (no mathtext: ``$x$`` shows as ``$x$``). ``scale``: inches per layout pixel."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, PathPatch, Rectangle
    from matplotlib.path import Path as MPath

    view = graph_view(graph)
    _validate(view, k, threshold, images, None)
    lay = layout(view)
    order = edge_order(view)
    shown = [e for e in order[:k] if threshold is None or abs(view.scores[e]) >= threshold]
    emax = symmetric_max(view.scores[order[: max(k, 1)]]) if len(order) else 1.0
    ns = view.node_scores if view.node_scores is not None else np.zeros(len(view.nodes))
    nmax = symmetric_max(ns)
    from matplotlib import colormaps

    cm = colormaps[CMAP]
    fig = Figure(figsize=(lay.width * scale, lay.height * scale + 0.4))
    ax = fig.add_axes((0, 0, 1, 0.97 if title or view.title else 1))
    ax.set(xlim=(0, lay.width), ylim=(lay.height, 0), xticks=[], yticks=[])
    ax.axis("off")
    for name, y in lay.rows:
        ax.text(6, y, name, va="center", fontsize=7, color="#666", parse_math=False)
    for p in lay.panels:
        x, y, w, h = p.box
        if images is not None:
            ax.imshow(np.asarray(images[p.image].convert("RGB")), extent=(x, x + w, y + h, y), zorder=0)
        for c in range(p.cols + 1):
            ax.plot([x + w * c / p.cols] * 2, [y, y + h], color="#888", lw=0.4, zorder=1)
        for r in range(p.rows + 1):
            ax.plot([x, x + w], [y + h * r / p.rows] * 2, color="#888", lw=0.4, zorder=1)
        tile = "" if p.tile is None or not _tiled(lay, p.image) else f" tile {p.tile}"
        ax.text(x, y + h + 10, f"image {p.image}{tile}", fontsize=6, parse_math=False)
    norm = Normalize(-emax, emax)
    for e in shown[::-1]:  # strongest on top
        s, d, v = int(view.src[e]), int(view.dst[e]), float(view.scores[e])
        pts = edge_path(lay.boxes[s], lay.boxes[d])
        path = MPath(pts, [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4])
        patch = PathPatch(path, fill=False, edgecolor=cm(norm(v)), lw=0.3 + 3.2 * abs(v) / emax, zorder=2, alpha=0.85)
        patch.set_gid(f"edge:{view.nodes[s].id}->{view.nodes[d].id}")
        ax.add_patch(patch)
    nnorm = Normalize(-nmax, nmax)
    panel_nodes = {p.node for p in lay.panels}
    for i, (n, (x, y, w, h), shape) in enumerate(zip(view.nodes, lay.boxes, lay.shapes)):
        color = cm(nnorm(ns[i]))
        if shape == "circle":
            patch = Circle((x + w / 2, y + h / 2), w / 2, facecolor=color, edgecolor="#333", lw=0.5, zorder=3)
        else:
            alpha = 0.55 if shape == "cell" or i in panel_nodes else 1.0
            patch = Rectangle((x, y), w, h, facecolor=color, edgecolor="#333", lw=0.4, alpha=alpha, zorder=3)
        patch.set_gid(f"node:{n.id}")
        ax.add_patch(patch)
        if shape != "cell" and i not in panel_nodes:
            text = f"H{n.head}" if n.kind == "head" and n.head is not None else short(n.label)
            ink = "#fff" if abs(ns[i]) > 0.6 * nmax else "#000"
            ax.text(
                x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=6, color=ink, zorder=4, parse_math=False
            )
    if title or view.title:
        fig.suptitle(title or view.title, fontsize=9)
    return fig
