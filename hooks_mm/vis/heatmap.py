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

from hooks_mm.layout import ModalityLayout
from hooks_mm.vis.common import (
    Scale,
    color_limits,
    css_colors,
    draw_panel,
    finish_figure,
    grid_html,
    panel_html,
    pick,
    png_data_uri,
    scale_html,
    thumbnail_uri,
)
from hooks_mm.vis.patches import ImageMap, patch_maps


def _maps(
    values: Any, layout: ModalityLayout, row: int, image: int | None, images: Any, tile_grid: Any, **limits: Any
) -> tuple[list[ImageMap], Scale]:
    """The image maps to draw and their shared colour scale (``limits``: vmin, vmax, cmap)."""
    maps = pick(patch_maps(values, layout, row, tile_grid=tile_grid, images=images), image, "image_index", "image")
    arrays = [a for m in maps for p in m.panels for a in (p.values, p.separators) if a is not None]
    return maps, color_limits(*arrays, **limits)


def _image_of(images: Sequence[Any] | None, m: ImageMap) -> Any:
    return images[m.image_index] if images is not None and m.image_index < len(images) else None


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

    maps, scale = _maps(values, layout, row, image, images, tile_grid, vmin=vmin, vmax=vmax, cmap=cmap)
    panels = [(m, p) for m in maps for p in m.panels]
    widths = [max(0.6, p.shape[1] / p.shape[0]) + (0.35 if p.separators is not None else 0) for _, p in panels]
    fig = Figure(figsize=(panel_size * sum(widths) + 1.2, panel_size + 0.7))
    axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": widths}, squeeze=False)
    mappable = None
    for ax, (m, p) in zip(axes[0], panels):
        mappable = draw_panel(
            ax,
            p.values,
            scale,
            image=_image_of(images, m),
            alpha=alpha if images is not None else 1.0,
            separators=p.separators,
            title=f"image {m.image_index} \u00b7 {p.name} {p.shape[0]}x{p.shape[1]}",
            label=f"image{m.image_index}/{p.name}",
        )
    return finish_figure(fig, mappable, axes[0], title, pad=0.02)


def _original_html(image: Any, index: int, size: int) -> str:
    """The image in its own colours, small, beside its value panels."""
    thumb = image.copy()
    thumb.thumbnail((size // 2, size // 2))
    return (
        f'<div class="hmm-original" data-image="{index}" style="display:inline-block;font-size:11px;color:#444">'
        f'<div class="hmm-panel-title">image {index} '
        f'(colours)</div><img src="{png_data_uri(thumb)}" alt="image {index}" width="{thumb.size[0]}"></div>'
    )


class PatchHeatmapHTML:
    """An HTML patch heatmap (no JavaScript); shows itself in Jupyter (with its stylesheet), ``.html`` is the
    markup, ``.save(path)`` writes an offline page."""

    def __init__(self, markup: str):
        self.html = markup

    def _repr_html_(self) -> str:
        from hooks_mm.vis.html import STYLE

        return f"<style>{STYLE}</style>{self.html}"  # the grid cells need it: without it no cell has a size

    def __str__(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"PatchHeatmapHTML({self.html.count('hmm-panel-title')} panels, {len(self.html)} chars of HTML)"

    def save(self, path: Any) -> Any:
        """Write a self-contained offline page with this view; returns its Path."""
        from pathlib import Path

        from hooks_mm.vis.html import page

        path = Path(path)
        path.write_text(page([self.html]), encoding="utf-8")
        return path


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
    """The same panels as :func:`patch_heatmap`, as self-contained HTML cells (hover: value). Images are drawn
    grey under the values (:func:`~hooks_mm.vis.common.underlay`), each with its coloured original beside."""
    maps, scale = _maps(values, layout, row, image, images, tile_grid, vmin=vmin, vmax=vmax, cmap=cmap)
    panels = []
    for m in maps:
        uri = thumbnail_uri(_image_of(images, m), size)
        if uri is not None:
            panels.append(_original_html(_image_of(images, m), m.image_index, size))
        for p in m.panels:
            rows, cols = p.shape
            cell = max(4, size // max(rows, cols))
            grid = panel_html(p.values, p.positions, scale, cell, uri, alpha)
            if p.separators is not None:
                sep, pos = p.separators[:, None], p.separator_positions[:, None]
                sep = grid_html(sep, pos, css_colors(sep, *scale), max(4, cell // 2), cell * rows, "hmm-grid hmm-sep")
                grid = f'<div style="display:flex">{grid}{sep}</div>'
            panels.append(
                f'<div class="hmm-panel" data-image="{m.image_index}" data-panel="{html.escape(p.name)}">'
                f'<div class="hmm-panel-title">image {m.image_index} \u00b7 {html.escape(p.name)} {rows}x{cols}</div>'
                f"{grid}</div>"
            )
    return PatchHeatmapHTML(
        f'<div class="hmm-heatmap">{scale_html(scale, title)}<div class="hmm-grids">{"".join(panels)}</div></div>'
    )
