"""Per-position values laid out on each image's patch grid, for every grid type of the layout.

``patch_maps(values, layout, row)`` turns a value per sequence position (attention from a
query, a neuron's activation, a logit-lens probability, a patching effect) into, per image
of the row, one or more *panels*: 2-D arrays that each cover the whole image.

* one grid (LLaVA, Janus, PaliGemma, Gemma3, Qwen-VL merged patches, VQ code grids of
  AnyGPT / Chameleon / Emu3): one panel ``"patches"``;
* anyres (LLaVA-NeXT / OneVision): ``"base"`` (tile 0) and ``"high-res"`` (tile 1, the
  unpadded grid), with the values at the newline tokens kept as ``separators``;
* sub-image tiles (Idefics3 / SmolVLM, InternVL): the split tiles stitched into one
  ``"tiles RxC"`` mosaic, and ``"global"`` (the last tile, the whole image downscaled).

End-of-row / newline tokens (``grid_col == -1``) are kept per row in ``separators``.

Example::

    maps = patch_maps(attn_from_last, layout, row=0)
    maps[1].panels[0].values          # [rows, cols] of image 1 of row 0 (NaN: no position)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from hooks_mm.layout import Modality, ModalityLayout
from hooks_mm.vis.common import to_numpy


@dataclass
class Panel:
    """A ``rows x cols`` grid of values covering the whole image."""

    name: str
    values: Float[np.ndarray, "rows cols"]  # NaN where no position of the sequence
    positions: Int[np.ndarray, "rows cols"]  # sequence position shown by each cell (-1: none)
    separators: Float[np.ndarray, " rows"] | None = None  # values at end-of-row tokens
    separator_positions: Int[np.ndarray, " rows"] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]


@dataclass
class ImageMap:
    """The panels of one image of one batch row."""

    row: int
    image_index: int  # which image of the row
    image_id: int  # which image of the batch
    kind: str  # "grid", "anyres" or "tiles"
    panels: list[Panel]

    @property
    def title(self) -> str:
        return f"image {self.image_index}"


def row_values(values: Any, layout: ModalityLayout, row: int) -> Float[np.ndarray, " seq"]:
    """The ``[seq]`` values of ``row`` from ``[seq]`` or ``[batch, seq]`` input."""
    v = to_numpy(values).astype(float)
    b, s = layout.shape
    if v.ndim == 2 and v.shape == (b, s):
        v = v[row]
    if v.shape != (s,):
        raise ValueError(
            f"values of shape {tuple(to_numpy(values).shape)} do not match the layout "
            f"[batch={b}, seq={s}]: pass one value per position, [seq] or [batch, seq] "
            "(e.g. pattern[row, head, query, :] for attention from one query)."
        )
    return v


def tile_grid_from_tokens(tokens: Sequence[str], layout: ModalityLayout, row: int = 0) -> dict[int, tuple[int, int]]:
    """Tile arrangement per image of ``row`` from Idefics3-style ``<row_R_col_C>`` markers."""
    img = to_numpy(layout.image_index[row])
    out: dict[int, tuple[int, int]] = {}
    for i in sorted(set(img[img >= 0].tolist())):
        pos = np.flatnonzero(img == i)
        found = [re.search(r"row_(\d+)_col_(\d+)", str(t)) for t in tokens[pos[0] - 3 : pos[-1] + 1]]
        pairs = [(int(m.group(1)), int(m.group(2))) for m in found if m]
        if pairs:
            out[int(i)] = (max(r for r, _ in pairs), max(c for _, c in pairs))
    return out


def infer_tile_grid(n: int, aspect: float | None = None) -> tuple[int, int]:
    """``(rows, cols)`` with ``rows * cols == n``: closest to ``aspect`` (width / height)
    when given, else the squarest with ``cols >= rows``."""
    pairs = [(r, n // r) for r in range(1, n + 1) if n % r == 0]
    target = math.log(aspect) if aspect else 0.0
    return min(pairs, key=lambda rc: (abs(math.log(rc[1] / rc[0]) - target), rc[0] > rc[1]))


def _tile_panels(layout: ModalityLayout, vals: np.ndarray, row: int, image_id: int) -> list[Panel]:
    mask = (to_numpy(layout.image_id[row]) == image_id) & (to_numpy(layout.modality[row]) == Modality.IMAGE)
    tile, r_, c_ = (to_numpy(t[row]) for t in (layout.tile, layout.grid_row, layout.grid_col))
    image = int(to_numpy(layout.image_index[row])[mask][0])
    panels = []
    for t, rows, cols in layout.grids[image_id]:
        grid = layout.grid(row, image, t) if rows and cols else None
        if grid is None:
            raise ValueError(
                f"image {image_id} tile {t} has no patch grid of positions (Mllama's patches are cross-attention "
                "keys, Idefics2's image positions are perceiver latents): plot the attention to those positions "
                "as a plain per-position chart instead (or, for Mllama, the cross-attention over the vision tiles)."
            )
        p = to_numpy(grid)
        sep_v, sep_p = np.full(rows, np.nan), np.full(rows, -1)
        sep = np.flatnonzero(mask & (tile == t) & (c_ < 0))  # newline / end-of-row tokens, one per grid row
        sep_v[r_[sep]], sep_p[r_[sep]] = vals[sep], sep
        has_sep = len(sep) > 0
        panels.append(Panel(f"tile {t}", vals[p], p, sep_v if has_sep else None, sep_p if has_sep else None))
    return panels


def _stitch(tiles: list[Panel], grid: tuple[int, int]) -> Panel:
    rows, cols = grid
    vals = [[tiles[r * cols + c].values for c in range(cols)] for r in range(rows)]
    pos = [[tiles[r * cols + c].positions for c in range(cols)] for r in range(rows)]
    return Panel(f"tiles {rows}x{cols}", np.block(vals), np.block(pos))


def patch_maps(
    values: Any,
    layout: ModalityLayout,
    row: int = 0,
    *,
    tile_grid: tuple[int, int] | dict[int, tuple[int, int]] | None = None,
    images: Sequence[Any] | None = None,
) -> list[ImageMap]:
    """Panels of every image of batch row ``row`` (see the module docstring).

    ``tile_grid`` gives the ``(rows, cols)`` arrangement of split tiles (Idefics3 /
    InternVL), per image index of the row or one for all; by default it is read from the
    images' aspect ratio (``images``: the row's PIL images) or taken as square as possible.
    """
    vals = row_values(values, layout, row)
    ids = to_numpy(layout.image_id[row])
    index = to_numpy(layout.image_index[row])
    out = []
    for k in sorted(set(ids[ids >= 0].tolist())):
        i = int(index[ids == k][0])
        tiles = _tile_panels(layout, vals, row, int(k))
        if len(tiles) == 1:
            tiles[0].name = "patches"
            out.append(ImageMap(row, i, int(k), "grid", tiles))
            continue
        anyres = any(t.separators is not None for t in tiles[1:]) or len({t.shape for t in tiles}) > 1
        if anyres:
            tiles[0].name, tiles[1].name = "base", "high-res"
            out.append(ImageMap(row, i, int(k), "anyres", tiles))
            continue
        n_sub = len(tiles) - 1
        grid = tile_grid.get(i) if isinstance(tile_grid, dict) else tile_grid
        if grid is None:
            aspect = images[i].size[0] / images[i].size[1] if images is not None and i < len(images) else None
            grid = infer_tile_grid(n_sub, aspect)
        if grid[0] * grid[1] != n_sub:
            raise ValueError(
                f"tile_grid {grid} does not hold the {n_sub} split tiles of image {i}; pass (rows, cols) with "
                f"rows * cols == {n_sub}."
            )
        tiles[-1].name = "global"
        out.append(ImageMap(row, i, int(k), "tiles", [_stitch(tiles[:-1], tuple(grid)), tiles[-1]]))
    if not out:
        raise ValueError(f"row {row} holds no image positions ({layout.describe(row)}).")
    return out
