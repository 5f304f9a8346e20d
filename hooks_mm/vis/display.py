"""Rich Jupyter displays (``_repr_html_``) and short ``__repr__`` lines for the library's result objects.

The objects' own methods (:class:`~hooks_mm.layout.ModalityLayout`, :class:`~hooks_mm.sweep.SweepResult`,
:class:`~hooks_mm.sweep.Attribution`, :class:`~hooks_mm.model.cache.MLLMCache`,
:class:`~hooks_mm.circuits.Graph`) delegate here, importing this module only when they are displayed (so
``import hooks_mm`` stays light). Every display is one offline HTML fragment: its own ``<style>``, plots as
inline SVG, no script, no request; every string that comes from data (token strings, node labels, table
cells) is HTML-escaped. Modalities have one colour each (:data:`MODALITY_COLORS`), the same in every display.

Example::

    layout = model.layout(inputs)
    layout                      # in Jupyter: one coloured bar per row, the describe() runs as labels
    print(repr(layout))         # ModalityLayout(batch=2, seq=31) row 0: special[0:1] text[1:4] image0 2x2[4:8] ...
"""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np

# one colour per modality (Modality names, lower case), shared by every display
MODALITY_COLORS = {
    "text": "#4c78a8",
    "image": "#f58518",
    "video": "#54a24b",
    "audio": "#b279a2",
    "special": "#8c8c8c",
    "pad": "#dddddd",
}
POSITIVE, NEGATIVE = "#c0392b", "#2c7fb8"  # bar colours: the value raises / lowers the metric
CSS = (
    ".hmm-disp{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;color:#222;margin:4px 0}"
    ".hmm-disp .hmm-head{font-weight:600;margin:2px 0 4px 0}"
    ".hmm-disp .hmm-note{color:#666;font-size:12px;margin:3px 0}"
    ".hmm-disp table.hmm-table{border-collapse:collapse;font-size:12px;margin:6px 0}"
    ".hmm-disp table.hmm-table td,.hmm-disp table.hmm-table th{border:1px solid #ddd;padding:2px 7px;"
    "text-align:right;white-space:nowrap;max-width:360px;overflow:hidden;text-overflow:ellipsis}"
    ".hmm-disp table.hmm-table th{background:#f4f4f4}"
    ".hmm-disp .hmm-runs{display:flex;height:20px;border:1px solid #ccc;margin:2px 0 8px 0;min-width:240px}"
    ".hmm-disp .hmm-run{height:100%;overflow:hidden;color:#fff;font-size:10px;line-height:20px;white-space:nowrap;"
    "text-overflow:ellipsis;min-width:0;text-indent:2px;box-shadow:inset -1px 0 #fff}"  # width = positions only
    ".hmm-disp .hmm-key{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px;vertical-align:middle}"
)


def esc(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too)."""
    return html.escape(str(value), quote=True)


def wrap(kind: str, body: str) -> str:
    """One display: ``<style>`` + a ``div.hmm-disp`` marked ``data-kind``."""
    return f'<style>{CSS}</style><div class="hmm-disp" data-kind="{esc(kind)}">{body}</div>'


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, everything else as str."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def table_html(columns: list[str], rows: list[list[Any]]) -> str:
    """An escaped ``table.hmm-table`` (header + rows)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="hmm-table"><tr>{head}</tr>{body}</table>'


def frame_html(df: Any, rows: Any) -> str:
    """:func:`table_html` of the DataFrame rows ``rows`` (an index list), all columns."""
    return table_html([str(c) for c in df.columns], df.loc[rows].values.tolist())


def bars_svg(labels: list[str], values: list[float], width: int = 420, bar: int = 14) -> str:
    """A horizontal bar chart as inline SVG: one bar per value from a zero line (red > 0, blue < 0),
    its label on the left and the value as the bar's tooltip (``<title>``)."""
    vals = np.asarray(values, dtype=float)
    finite = vals[np.isfinite(vals)]
    m = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    left, plot = 170, width - 180
    zero = left + plot / 2 if (finite < 0).any() else left
    span = plot / 2 if (finite < 0).any() else plot
    out = []
    for i, (label, v) in enumerate(zip(labels, vals)):
        y = 4 + i * (bar + 4)
        w = 0.0 if not np.isfinite(v) else abs(v) / m * span
        x = zero - w if v < 0 else zero
        color = NEGATIVE if v < 0 else POSITIVE
        text = esc(label if len(label) <= 28 else label[:27] + "\u2026")
        out.append(
            f'<text x="{left - 6}" y="{y + bar - 3}" text-anchor="end" font-size="11" fill="#333">{text}</text>'
            f'<rect class="hmm-bar-rect" x="{x:.1f}" y="{y}" width="{max(w, 0.5):.1f}" height="{bar}" '
            f'fill="{color}" data-v="{v:.6g}"><title>{esc(label)}: {v:.6g}</title></rect>'
        )
    height = 8 + len(vals) * (bar + 4)
    axis = f'<line x1="{zero:.1f}" y1="0" x2="{zero:.1f}" y2="{height}" stroke="#333" stroke-width="1"/>'
    return (
        f'<svg class="hmm-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(out)}{axis}</svg>'
    )


# ------------------------------------------------------------------------------------------ layout

RUN = re.compile(r"(.+?)\[(\d+):(\d+)\]")


def layout_runs(layout: Any, row: int) -> list[tuple[str, str, int, int]]:
    """``(label, modality name, start, end)`` of each run of :meth:`ModalityLayout.describe` for ``row``."""
    out = []
    for m in RUN.finditer(layout.describe(row)):
        label = m.group(1).strip()
        name = label.split(" ")[0].rstrip("0123456789")  # 'image0 2x2' -> 'image'
        out.append((label, name, int(m.group(2)), int(m.group(3))))
    return out


def layout_repr(layout: Any, max_rows: int = 4) -> str:
    """``ModalityLayout(batch=B, seq=S)`` and the describe() line of the first rows."""
    b, s = layout.shape
    lines = [f"  row {r}: {layout.describe(r)}" for r in range(min(b, max_rows))]
    more = [f"  ... {b - max_rows} more rows"] if b > max_rows else []
    return "\n".join([f"ModalityLayout(batch={b}, seq={s})", *lines, *more])


def layout_html(layout: Any, max_rows: int = 8) -> str:
    """One bar per row: each run a block as wide as its positions, coloured by modality, labelled with
    its describe() text (hover: the run and its positions); a legend of the modalities present."""
    b, s = layout.shape
    rows = []
    present: dict[str, None] = {}
    for r in range(min(b, max_rows)):
        blocks = []
        for label, name, start, end in layout_runs(layout, r):
            present[name] = None
            color = MODALITY_COLORS.get(name, "#999")
            ink = "#333" if name == "pad" else "#fff"
            blocks.append(
                f'<div class="hmm-run" data-modality="{esc(name)}" data-start="{start}" data-end="{end}" '
                f'style="flex:{end - start} 0 0;background:{color};color:{ink}" '
                f'title="{esc(label)} [{start}:{end}]">{esc(label)}</div>'
            )
        rows.append(
            f'<div class="hmm-note">row {r}: {esc(layout.describe(r))}</div>'
            f'<div class="hmm-runs">{"".join(blocks)}</div>'
        )
    more = f'<div class="hmm-note">... {b - max_rows} more rows</div>' if b > max_rows else ""
    legend = "".join(
        f'<span class="hmm-key" style="background:{MODALITY_COLORS.get(n, "#999")}"></span>{esc(n)}' for n in present
    )
    counts = ", ".join(f"{k} {v}" for k, v in layout.summary().items())
    head = f'<div class="hmm-head">ModalityLayout: batch {b}, seq {s}</div><div class="hmm-note">{esc(counts)}</div>'
    return wrap("layout", f"{head}{''.join(rows)}{more}<div class='hmm-note'>{legend}</div>")


# ------------------------------------------------------------------------------ sweeps, attribution


def effect_of(table: Any) -> tuple[Any, str]:
    """The per-row effect a sweep table is ranked by: ``delta``, else the L2 norm over ``delta_j``."""
    if "delta" in table.columns:
        return table["delta"].astype(float), "delta"
    cols = [c for c in table.columns if re.fullmatch(r"delta_\d+", str(c))]
    if not cols:
        raise ValueError("this sweep table has no delta column: it was not built by run_sweep / sweep.")
    return (table[cols].astype(float) ** 2).sum(axis=1) ** 0.5, f"|delta| (L2 over {len(cols)} entries)"


def row_label(table: Any, i: Any) -> str:
    """A short label of sweep row ``i``: ``L{layer} N{neuron}`` for neuron configs, else its type and row."""
    r = table.loc[i]
    if "layer" in table.columns and "neurons" in table.columns:
        return f"L{r['layer']} N{r['neurons']}"
    return f"#{i} {r.get('type', '')}".strip()


def sweep_repr(result: Any) -> str:
    t = result.table
    meta = result.meta or {}
    secs = f", {meta['seconds']:.1f}s" if isinstance(meta.get("seconds"), (int, float)) else ""
    clean = result.clean.flatten()
    shown = f"{float(clean[0]):.4g}" if clean.numel() == 1 else f"shape {tuple(result.clean.shape)}"
    return f"SweepResult({len(t)} configs, clean {shown}{secs}; .table columns {list(t.columns)})"


def sweep_html(result: Any, top: int = 10) -> str:
    """The top ``top`` configs by |effect| (table) and their effects as a bar chart."""
    t = result.table
    effect, name = effect_of(t)
    order = effect.abs().sort_values(ascending=False, kind="stable").index[:top].tolist()
    meta = result.meta or {}
    facts = [f"{len(t)} configs"] + [
        f"{k} {fmt(v)}" for k, v in meta.items() if isinstance(v, (int, float, str)) and k != "configs"
    ]
    clean = result.clean.flatten()
    facts.append(f"clean {float(clean[0]):.4g}" if clean.numel() == 1 else f"clean shape {tuple(result.clean.shape)}")
    head = (
        f'<div class="hmm-head">SweepResult</div><div class="hmm-note">{esc(" · ".join(facts))}</div>'
        f'<div class="hmm-note">top {len(order)} of {len(t)} configs by |{esc(name)}| (result.table has all)</div>'
    )
    plot = bars_svg([row_label(t, i) for i in order], [float(effect[i]) for i in order])
    return wrap("sweep", head + frame_html(t, order) + plot)


def attribution_repr(att: Any) -> str:
    return (
        f"Attribution(layers {att.layers}, neurons {tuple(att.neurons.shape)}, positions "
        f"{tuple(att.positions.shape)}; .table ranks {len(att.table)} neurons by |estimate|)"
    )


def attribution_html(att: Any, top: int = 10) -> str:
    """The top ``top`` neurons by |estimate| (with the exact effect where verified) and a bar chart."""
    t = att.table
    rows = t.index[:top].tolist()  # the table is ranked by |estimate| already
    head = (
        f'<div class="hmm-head">Attribution</div><div class="hmm-note">{esc(attribution_repr(att))}</div>'
        f'<div class="hmm-note">top {len(rows)} neurons by |estimate| (first-order estimates'
        f"{', exact = the verified ablation effect' if 'exact' in t.columns else ''})</div>"
    )
    plot = bars_svg(
        [f"L{t.loc[i, 'layer']} N{t.loc[i, 'neuron']}" for i in rows], [float(t.loc[i, "estimate"]) for i in rows]
    )
    return wrap("attribution", head + frame_html(t, rows) + plot)


# ------------------------------------------------------------------------------------------- caches

BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def cache_groups(cache_dict: dict[str, Any]) -> list[tuple[str, str, str, str, int]]:
    """``(name, layers, shape, dtype, bytes)`` rows: one per hook, ``blocks.{l}.x`` of equal shape and
    dtype merged into one ``blocks.*.x`` row over their layers."""
    groups: dict[tuple[str, tuple, str], list[Any]] = {}
    for key, value in cache_dict.items():
        m = BLOCK.fullmatch(key)
        name, layer = (f"blocks.*.{m.group(2)}", int(m.group(1))) if m else (key, None)
        shape = tuple(getattr(value, "shape", ()))
        dtype = str(getattr(value, "dtype", type(value).__name__)).replace("torch.", "")
        size = int(value.numel() * value.element_size()) if hasattr(value, "element_size") else 0
        groups.setdefault((name, shape, dtype), []).append((layer, size))
    out = []
    for (name, shape, dtype), items in groups.items():
        layers = sorted(l for l, _ in items if l is not None)
        where = _ranges(layers) if layers else "-"
        out.append((name, where, str(list(shape)), dtype, sum(s for _, s in items)))
    return out


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2, 5'``."""
    parts, start = [], values[0]
    for a, b in zip(values, values[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(parts)


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def cache_repr(cache: Any) -> str:
    d = cache.cache_dict
    rows = cache_groups(d)
    total = sum(r[4] for r in rows)
    listed = "; ".join(f"{n} [{l}] {s} {t}" for n, l, s, t, _ in rows[:6])
    more = f"; ... {len(rows) - 6} more" if len(rows) > 6 else ""
    return f"{type(cache).__name__}({len(d)} activations, {_mb(total)}: {listed}{more})"


def cache_html(cache: Any, max_rows: int = 80) -> str:
    """A compact table: each hook (layers merged), its shape, dtype and memory."""
    d = cache.cache_dict
    rows = cache_groups(d)
    total = sum(r[4] for r in rows)
    note = f"{len(d)} activations, {_mb(total)}"
    positions = getattr(cache, "positions", None)
    if positions is not None:
        note += f"; a pos= cache: {positions.shape[-1]} kept positions per row (cache.positions)"
    more = f'<div class="hmm-note">... {len(rows) - max_rows} more rows</div>' if len(rows) > max_rows else ""
    body = table_html(["name", "layers", "shape", "dtype", "memory"], [[*r[:4], _mb(r[4])] for r in rows[:max_rows]])
    head = f'<div class="hmm-head">{esc(type(cache).__name__)}</div><div class="hmm-note">{esc(note)}</div>'
    return wrap("cache", head + body + more)


# ------------------------------------------------------------------------------------------- graphs


def graph_html_summary(graph: Any, top: int = 10) -> str:
    """Counts, the ``top`` edges by |score| (table and bars) and how to open the interactive view."""
    edges = graph.top_edges(top)
    labels = {n.id: n.label for n in graph.nodes}
    rows = [[s, labels[s], d, labels[d], v] for s, d, v in edges]
    kinds: dict[str, int] = {}
    for n in graph.nodes:
        kinds[n.kind] = kinds.get(n.kind, 0) + 1
    facts = f"{len(graph.nodes)} nodes ({', '.join(f'{k} {v}' for k, v in kinds.items())}), {graph.n_edges} edges"
    head = (
        f'<div class="hmm-head">Graph: {esc(graph.method)}, metric {esc(graph.metric)}</div>'
        f'<div class="hmm-note">{esc(facts)}</div>'
        f'<div class="hmm-note">top {len(edges)} edges by |score|; the interactive view: '
        "<code>hooks_mm.vis.graph_html(graph)</code> (or <code>.save(path)</code> for a page)</div>"
    )
    table = table_html(["src", "src label", "dst", "dst label", "score"], rows)
    plot = bars_svg([f"{s} \u2192 {d}" for s, d, _ in edges], [v for _, _, v in edges])
    return wrap("graph", head + table + plot)
