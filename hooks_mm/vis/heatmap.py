"""Image-patch heatmaps: per-position values drawn over the input images, as PNG or HTML.

Works for every grid type the layout describes (see :mod:`hooks_mm.vis.patches`): one
panel per grid, each over the whole image, with end-of-row / newline tokens as a narrow
extra column on the right. All panels of a call share one colour scale (symmetric
``RdBu_r`` for signed values, ``viridis`` otherwise).

Example::

    from hooks_mm.vis import patch_heatmap, patch_heatmap_html
    attn = cache["blocks.1.attn.hook_pattern"][0, :, -1].mean(0)     # [seq] from the last token
    fig = patch_heatmap(attn, layout, row=0, images=[img0, img1], title="attention from last")
    fig.savefig("attn.png")
    patch_heatmap_html(attn, layout, row=0, images=[img0, img1])     # displays in Jupyter
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from hooks_mm.layout import ModalityLayout
from hooks_mm.vis.common import color_limits, css_colors, png_data_uri
from hooks_mm.vis.patches import ImageMap, patch_maps


def _select(maps: list[ImageMap], image: int | None) -> list[ImageMap]:
    if image is None:
        return maps
    chosen = [m for m in maps if m.image_index == image]
    if not chosen:
        raise ValueError(f"image {image} is not in this row; it holds images {[m.image_index for m in maps]}.")
    return chosen


def _limits(maps: list[ImageMap], vmin: float | None, vmax: float | None, cmap: str | None) -> tuple[float, float, str]:
    parts = [p.values.ravel() for m in maps for p in m.panels]
    parts += [p.separators for m in maps for p in m.panels if p.separators is not None]
    lo, hi, default = color_limits(np.concatenate(parts), vmin, vmax)
    return lo, hi, cmap or default


def patch_heatmap(
    values: Any,
    layout: ModalityLayout,
    row: int = 0,
    *,
    image: int | None = None,
    images: Sequence[Any] | None = None,
    tile_grid: Any = None,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.65,
    title: str | None = None,
    panel_size: float = 2.4,
):
    """A matplotlib Figure: every panel of every image of ``row`` (or of image ``image``).

    ``images`` are the row's PIL images (drawn under the heatmap); each axes is labelled
    ``"image{i}/{panel}"`` (``ax.get_label()``) so it can be found again.
    """
    from matplotlib.figure import Figure

    maps = _select(patch_maps(values, layout, row, tile_grid=tile_grid, images=images), image)
    lo, hi, cm = _limits(maps, vmin, vmax, cmap)
    panels = [(m, p) for m in maps for p in m.panels]
    widths = [max(0.6, p.shape[1] / p.shape[0]) + (0.35 if p.separators is not None else 0) for _, p in panels]
    fig = Figure(figsize=(panel_size * sum(widths) + 1.2, panel_size + 0.7))
    axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": widths}, squeeze=False)
    mappable = None
    for ax, (m, p) in zip(axes[0], panels):
        rows, cols = p.shape
        if images is not None and m.image_index < len(images):
            ax.imshow(
                np.asarray(images[m.image_index].convert("RGB")), extent=(0, cols, rows, 0), interpolation="bilinear"
            )
        over = np.ma.masked_invalid(p.values)
        mappable = ax.imshow(
            over,
            extent=(0, cols, rows, 0),
            cmap=cm,
            vmin=lo,
            vmax=hi,
            alpha=alpha if images is not None else 1.0,
            interpolation="nearest",
        )
        right = cols
        if p.separators is not None:
            sep = np.ma.masked_invalid(p.separators[:, None])
            ax.imshow(
                sep, extent=(cols + 0.25, cols + 1.0, rows, 0), cmap=cm, vmin=lo, vmax=hi, interpolation="nearest"
            )
            ax.text(cols + 0.625, -0.1, "\u21b5", ha="center", va="bottom", fontsize=8)
            right = cols + 1.0
        ax.set_xlim(0, right)
        ax.set_ylim(rows, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"image {m.image_index} \u00b7 {p.name} {rows}x{cols}", fontsize=8)
        ax.set_label(f"image{m.image_index}/{p.name}")
    fig.colorbar(mappable, ax=list(axes[0]), fraction=0.03, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


class PatchHeatmapHTML:
    """An HTML patch heatmap (no JavaScript); shows itself in Jupyter, ``.html`` is the markup."""

    def __init__(self, markup: str):
        self.html = markup

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def _grid_html(
    vals: np.ndarray,
    pos: np.ndarray,
    colors: list[str],
    rows: int,
    cols: int,
    w: int,
    h: int,
    cls: str = "hmm-grid",
    style: str = "",
) -> str:
    cells = []
    for k, (v, p, c) in enumerate(zip(vals.ravel(), pos.ravel(), colors)):
        r, q = divmod(k, cols)
        tip = f"pos {p} \u00b7 ({r}, {q}) \u00b7 {v:.4g}" if p >= 0 else "no position"
        cells.append(
            f'<div class="hmm-cell" data-pos="{p}" data-r="{r}" data-c="{q}" data-v="{v:.6g}" '
            f'style="background:{c}" title="{html.escape(tip)}"></div>'
        )
    return (
        f'<div class="{cls}" style="grid-template-columns:repeat({cols},1fr);grid-template-rows:repeat({rows},1fr);'
        f'width:{w}px;height:{h}px;{style}">{"".join(cells)}</div>'
    )


def patch_heatmap_html(
    values: Any,
    layout: ModalityLayout,
    row: int = 0,
    *,
    image: int | None = None,
    images: Sequence[Any] | None = None,
    tile_grid: Any = None,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.65,
    title: str | None = None,
    size: int = 200,
) -> PatchHeatmapHTML:
    """The same panels as :func:`patch_heatmap`, as self-contained HTML cells (hover: value)."""
    maps = _select(patch_maps(values, layout, row, tile_grid=tile_grid, images=images), image)
    lo, hi, cm = _limits(maps, vmin, vmax, cmap)
    bar = ",".join(css_colors(np.linspace(lo, hi, 9), lo, hi, cm))
    label = html.escape(title) + " &middot; " if title else ""
    head = (
        f'<div class="hmm-note">{label}'
        f'{lo:.3g}<span class="hmm-bar" style="background:linear-gradient(to right,{bar})"></span>{hi:.3g}</div>'
    )
    panels = []
    for m in maps:
        uri = None
        if images is not None and m.image_index < len(images):
            thumb = images[m.image_index].copy()
            thumb.thumbnail((2 * size, 2 * size))  # enough for the panel, keeps the page small
            uri = png_data_uri(thumb)
        for p in m.panels:
            rows, cols = p.shape
            cell = max(4, size // max(rows, cols))
            w, h = cell * cols, cell * rows
            a = alpha if uri else 1.0
            grid = _grid_html(
                p.values,
                p.positions,
                css_colors(p.values, lo, hi, cm, a),
                rows,
                cols,
                w,
                h,
                style="position:absolute;inset:0;gap:0;background:transparent;border:0" if uri else "",
            )
            if uri:
                grid = f'<div class="hmm-grid-bg" style="width:{w}px;height:{h}px"><img src="{uri}" alt="">{grid}</div>'
            if p.separators is not None:
                sep = _grid_html(
                    p.separators,
                    p.separator_positions,
                    css_colors(p.separators, lo, hi, cm),
                    rows,
                    1,
                    max(4, cell // 2),
                    h,
                    cls="hmm-grid hmm-sep",
                )
                grid = f'<div style="display:flex">{grid}{sep}</div>'
            panels.append(
                f'<div class="hmm-panel" data-image="{m.image_index}" data-panel="{html.escape(p.name)}">'
                f'<div class="hmm-panel-title">image {m.image_index} \u00b7 {html.escape(p.name)} {rows}x{cols}</div>'
                f"{grid}</div>"
            )
    return PatchHeatmapHTML(f'<div class="hmm-heatmap">{head}<div class="hmm-grids">{"".join(panels)}</div></div>')
