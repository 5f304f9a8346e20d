"""Views of the per-patch logit lens and direct logit attribution (:mod:`hooks_mm.analysis.lens`,
:mod:`hooks_mm.analysis.dla`), over the image's patch grid.

* :func:`logit_lens_html` / :func:`logit_lens_figure`: one panel per lens layer (small multiples; ``slider=True``
  in HTML shows one layer at a time under a range slider), each cell labelled with its top token and coloured by
  that token's probability (``color="prob"``) or by the log-probability of a chosen token (``color="logprob"``,
  ``token=j``: the j-th of the lens's ``tokens``). Token strings are text: ``<script>`` shows as ``<script>``.
* :func:`dla_heatmap` / :func:`dla_heatmap_html`: the per-patch attribution summed over the layers and heads, on
  a diverging scale centred at 0 (red: for the target, blue: against).

The HTML is self-contained (no request leaves the machine); the figures are matplotlib Figures.

Example::

    lens = patch_logit_lens(model, inputs, top_k=3, tokens=[red_id])
    page([logit_lens_html(lens, row=0, images=imgs), logit_lens_html(lens, color="logprob", slider=True)])
    logit_lens_figure(lens, row=0).savefig("lens.png")
    dla_heatmap(patch_dla(model, inputs, target=red_id), row=0, images=imgs).savefig("dla.png")
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from hooks_mm.analysis.dla import PatchDLA
from hooks_mm.analysis.lens import LensRow, PatchLens
from hooks_mm.vis.common import Scale, color_limits, css_colors, draw_panel, finish_figure, pick, scale_html
from hooks_mm.vis.heatmap import PatchHeatmapHTML, patch_heatmap, patch_heatmap_html
from hooks_mm.vis.patches import ImageMap, patch_maps

LENS_STYLE = (
    ".hmm-lens-grid{display:grid;gap:1px;background:#ddd;border:1px solid #ddd}"
    ".hmm-lens-cell{overflow:hidden;white-space:nowrap;text-overflow:clip;font:10px/1.1 monospace;"
    "display:flex;align-items:center;justify-content:center}"
    ".hmm-lens-layers{display:flex;flex-wrap:wrap;gap:12px}"
)


def _row(lens: PatchLens, row: int) -> LensRow:
    if not isinstance(lens, PatchLens):
        raise TypeError(f"pass the result of patch_logit_lens, not {type(lens).__name__}.")
    return lens[row]


def _cell_values(lens: PatchLens, r: LensRow, color: str, token: int) -> np.ndarray:
    """[layer, n]: what colours each cell."""
    if color == "prob":
        return r.top_probs[..., 0].double().numpy()
    if color == "logprob":
        if r.logprobs is None:
            raise ValueError("color='logprob' needs the lens's tokens: run patch_logit_lens(..., tokens=[ids]).")
        n = r.logprobs.shape[-1]
        if not isinstance(token, int) or not 0 <= token < n:
            raise ValueError(f"token={token!r}: give the index (0..{n - 1}) of one of the lens's {n} tokens.")
        return r.logprobs[..., token].double().numpy()
    raise ValueError(f"color={color!r}: choose 'prob' (the top token's probability) or 'logprob' (a chosen token's).")


def _layers(lens: PatchLens, layers: Sequence[int] | None) -> list[int]:
    """Indices into ``lens.layers`` of the layers to draw (``layers`` are lens layer numbers)."""
    if layers is None:
        return list(range(len(lens.layers)))
    missing = [l for l in layers if l not in lens.layers]
    if missing:
        raise ValueError(f"layers {missing} are not in this lens (it holds layers {lens.layers}).")
    return [lens.layers.index(l) for l in layers]


def _maps(lens: PatchLens, r: LensRow, per_pos: np.ndarray, tile_grid: Any, images: Any) -> list[ImageMap]:
    """patch_maps of ``per_pos`` [n] on image ``lens.image`` of the row (NaN elsewhere)."""
    seq = np.full(lens.layout.shape[1], np.nan)
    seq[r.positions.numpy()] = per_pos
    maps = patch_maps(seq, lens.layout, r.row, tile_grid=tile_grid, images=images)
    return pick(maps, lens.image, "image_index", "image")


def _label_lookup(r: LensRow, layer: int) -> dict[int, str]:
    return {int(p): r.top_tokens[layer][i][0] for i, p in enumerate(r.positions.tolist())}


def _lens_grid(values: np.ndarray, positions: np.ndarray, labels: dict[int, str], scale: Scale, cell: int) -> str:
    rows, cols = values.shape
    colors = css_colors(values, *scale)
    cells = []
    for k, (v, p, c) in enumerate(zip(values.ravel(), positions.ravel(), colors)):
        rr, cc = divmod(k, cols)
        tok = labels.get(int(p), "") if p >= 0 else ""
        dark = c != "transparent" and sum(int(x) for x in c[5:].split(",")[:3]) < 380
        tip = f"pos {p} \u00b7 ({rr}, {cc}) \u00b7 {tok!r} \u00b7 {v:.4g}" if p >= 0 else "no position"
        cells.append(
            f'<div class="hmm-cell hmm-lens-cell" data-pos="{p}" data-r="{rr}" data-c="{cc}" data-v="{v:.6g}" '
            f'data-token="{html.escape(tok, quote=True)}" title="{html.escape(tip, quote=True)}" '
            f'style="background:{c};color:{"#fff" if dark else "#111"}">{html.escape(tok)}</div>'
        )
    return (
        f'<div class="hmm-lens-grid" style="grid-template-columns:repeat({cols},{cell}px);'
        f'grid-template-rows:repeat({rows},{cell}px)">{"".join(cells)}</div>'
    )


def logit_lens_html(
    lens: PatchLens,
    row: int = 0,
    *,
    color: str = "prob",
    token: int = 0,
    layers: Sequence[int] | None = None,
    slider: bool = False,
    images: Sequence[Any] | None = None,
    tile_grid: Any = None,
    cell: int = 34,
    title: str | None = None,
) -> PatchHeatmapHTML:
    """The lens of batch row ``row``: per lens layer, the image's patch grid with each cell's top token (see the
    module docstring). ``layers``: lens layer numbers to show (default all). Self-contained HTML (in Jupyter it
    displays itself; ``.html`` is the markup)."""
    r = _row(lens, row)
    vals = _cell_values(lens, r, color, token)
    chosen = _layers(lens, layers)
    limits = {"vmin": 0.0, "vmax": 1.0} if color == "prob" else {}
    scale = color_limits(vals[chosen], cmap="viridis", **limits)
    what = "top token's probability" if color == "prob" else f"log-prob of token {int(lens.tokens[token])}"
    sections = []
    for li in chosen:
        labels = _label_lookup(r, li)
        panels = []
        for m in _maps(lens, r, vals[li], tile_grid, images):
            for p in m.panels:
                grid = _lens_grid(p.values, p.positions, labels, scale, cell)
                if p.separators is not None:  # newline / end-of-row tokens: a column on the right
                    sep = _lens_grid(p.separators[:, None], p.separator_positions[:, None], labels, scale, cell)
                    grid = f'<div style="display:flex;gap:3px">{grid}{sep}</div>'
                panels.append(
                    f'<div class="hmm-panel" data-image="{m.image_index}" data-panel="{html.escape(p.name)}">'
                    f'<div class="hmm-panel-title">{html.escape(p.name)} {p.shape[0]}x{p.shape[1]}</div>{grid}</div>'
                )
        name = html.escape(lens.hook_names[li])
        sections.append(
            f'<div class="hmm-lens-layer" data-layer="{lens.layers[li]}"'
            f"{' hidden' if slider and li != chosen[-1] else ''}>"
            f'<div class="hmm-panel-title">layer {lens.layers[li]} ({name})</div>'
            f'<div class="hmm-grids">{"".join(panels)}</div></div>'
        )
    head = title or f"logit lens \u00b7 row {row} \u00b7 image {lens.image} \u00b7 colour: {what}"
    control = ""
    if slider:
        uid = "hmm-lens-" + uuid.uuid4().hex[:10]
        control = (
            f'<div class="hmm-note">layer <input type="range" id="{uid}" min="0" max="{len(chosen) - 1}" '
            f'value="{len(chosen) - 1}" step="1"> <span id="{uid}-l">{lens.layers[chosen[-1]]}</span></div>'
            f"<script>(function(){{var s=document.getElementById('{uid}');"
            f"s.addEventListener('input',function(){{var ls=s.closest('.hmm-lens').querySelectorAll('.hmm-lens-layer');"
            f"ls.forEach(function(e,i){{e.hidden=(i!=+s.value);}});"
            f"document.getElementById('{uid}-l').textContent=ls[+s.value].dataset.layer;}});}})();</script>"
        )
    return PatchHeatmapHTML(
        f'<div class="hmm-heatmap hmm-lens"><style>{LENS_STYLE}</style>{scale_html(scale, head)}{control}'
        f'<div class="hmm-lens-layers">{"".join(sections)}</div></div>'
    )


def logit_lens_figure(
    lens: PatchLens,
    row: int = 0,
    *,
    color: str = "prob",
    token: int = 0,
    layers: Sequence[int] | None = None,
    images: Sequence[Any] | None = None,
    tile_grid: Any = None,
    panel_size: float = 2.4,
    fontsize: float = 6,
    title: str | None = None,
):
    """A matplotlib Figure: one row of panels per lens layer, each cell labelled with its top token. Axes are
    labelled ``"layer{L}/{panel}"`` (``ax.get_label()``)."""
    from matplotlib.figure import Figure

    r = _row(lens, row)
    vals = _cell_values(lens, r, color, token)
    chosen = _layers(lens, layers)
    limits = {"vmin": 0.0, "vmax": 1.0} if color == "prob" else {}
    scale = color_limits(vals[chosen], cmap="viridis", **limits)
    grid = [(li, m, p) for li in chosen for m in _maps(lens, r, vals[li], tile_grid, images) for p in m.panels]
    n_cols = len(grid) // len(chosen)
    fig = Figure(figsize=(panel_size * n_cols + 1.2, panel_size * len(chosen) + 0.6))
    axes = fig.subplots(len(chosen), n_cols, squeeze=False)
    mappable = None
    for ax, (li, m, p) in zip(axes.ravel(), grid):
        image = images[m.image_index] if images is not None and m.image_index < len(images) else None
        mappable = draw_panel(
            ax,
            p.values,
            scale,
            image=image,
            alpha=0.65 if image is not None else 1.0,
            title=f"layer {lens.layers[li]} \u00b7 {p.name}",
            label=f"layer{lens.layers[li]}/{p.name}",
        )
        labels, (lo, hi, _) = _label_lookup(r, li), scale
        for (rr, cc), pos in np.ndenumerate(p.positions):
            if pos >= 0:
                light = (p.values[rr, cc] - lo) / (hi - lo) > 0.6  # viridis: dark below, light above
                ink = "black" if light or image is not None else "white"
                ax.text(cc + 0.5, rr + 0.5, labels[int(pos)], ha="center", va="center", fontsize=fontsize, color=ink)
    what = "top token's probability" if color == "prob" else f"log-prob of token {int(lens.tokens[token])}"
    return finish_figure(fig, mappable, axes.ravel(), title or f"logit lens, row {row}: colour = {what}", pad=0.02)


def _dla_values(dla: PatchDLA, row: int) -> tuple[np.ndarray, float]:
    if not isinstance(dla, PatchDLA):
        raise TypeError(f"pass the result of patch_dla, not {type(dla).__name__}.")
    values = dla.values(row).double().numpy()
    m = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
    return values, (m if m > 0 else 1e-9)


def dla_heatmap(dla: PatchDLA, row: int = 0, *, images: Sequence[Any] | None = None, **kwargs: Any):
    """The per-patch attribution of row ``row`` summed over layers and heads, as a matplotlib Figure on a diverging
    scale centred at 0 (keywords: :func:`~hooks_mm.vis.patch_heatmap`'s)."""
    values, m = _dla_values(dla, row)
    kwargs.setdefault("title", f"direct logit attribution per patch, row {row}")
    return patch_heatmap(
        values, dla.layout, row, image=dla.image, images=images, cmap="RdBu_r", vmin=-m, vmax=m, **kwargs
    )


def dla_heatmap_html(dla: PatchDLA, row: int = 0, *, images: Sequence[Any] | None = None, **kwargs: Any):
    """:func:`dla_heatmap` as self-contained HTML cells (hover: value)."""
    values, m = _dla_values(dla, row)
    kwargs.setdefault("title", f"direct logit attribution per patch, row {row}")
    return patch_heatmap_html(
        values, dla.layout, row, image=dla.image, images=images, cmap="RdBu_r", vmin=-m, vmax=m, **kwargs
    )
