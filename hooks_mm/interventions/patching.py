"""Activation patching: from a source run into this run, at the same or mapped positions.

``map`` says how source positions meet target positions:

- ``"same"``: the same positions (the two runs must have the same layout shape);
- ``"order"``: the k-th position ``source_positions`` picks in a row goes to the k-th
  position ``positions`` picks (an explicit map, e.g. image positions of run A into text
  positions of run B; counts must match per row);
- ``"grid"``: image patches resampled (bilinear) from each source image's patch grid onto
  the target image's grid, tile by tile: for runs whose image-token counts differ
  (dynamic resolution, anyres). Separator tokens are left alone.

Example::

    spec = Patch(layers=range(0, 4), source="clean", component="resid_pre", positions=Image())
    patched = model.run_with_interventions(corrupted, spec, sources={"clean": clean})
    effect = patching_sweep(model, clean, corrupted, metric, positions={"image": Image(), "last": Last()})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from hooks_mm.interventions.base import Context, Hooks, Intervention, compile_hooks
from hooks_mm.layout import Image, ModalityLayout, NonPad, Selector

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

COMPONENTS = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
MAPS = ("same", "order", "grid")


@dataclass
class Patch(Intervention):
    """Write the ``source`` run's ``component`` activations into this run, over ``layers``."""

    layers: int | list[int] | None
    source: str = "clean"
    component: str = "resid_pre"
    positions: Selector = field(default_factory=NonPad)
    source_positions: Selector | None = None
    map: str = "same"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.map not in MAPS:
            raise ValueError(f"Patch: map {self.map!r} is not one of {MAPS}.")

    def _names(self, ctx: Context) -> list[str]:
        hook = COMPONENTS.get(self.component, self.component)
        return [ctx.hook_name(hook, l) for l in ctx.layers(self.layers, "Patch")]

    def needs(self, ctx: Context) -> set[tuple[str, str]]:
        return {(self.source, n) for n in self._names(ctx)}

    def hooks(self, ctx: Context) -> Hooks:
        names = self._names(ctx)
        _, src_layout = ctx.source(self.source)
        if src_layout.shape[0] != ctx.layout.shape[0]:
            raise ValueError(
                f"Patch: source {self.source!r} has {src_layout.shape[0]} rows, this run "
                f"{ctx.layout.shape[0]}: row b of the source patches row b of the target."
            )
        tgt = ctx.mask(self.positions, "Patch target")
        src_sel = self.source_positions if self.source_positions is not None else self.positions
        if self.map == "grid":
            pairs = _grid_pairs(src_layout, ctx.layout, src_sel, self.positions)
            return [(n, _grid_fn(ctx.source_activation(self.source, n), pairs)) for n in names]
        if self.map == "same":
            if src_layout.shape != ctx.layout.shape or self.source_positions is not None:
                raise ValueError(
                    f"Patch: the source layout {src_layout.shape} and this run's {ctx.layout.shape} "
                    "differ (or source_positions was given): use map='order' with "
                    "source_positions for an explicit position map, or map='grid' to resample "
                    "image patches over the 2-D patch grid."
                )
            t_rows, t_cols = tgt.nonzero(as_tuple=True)
            s_rows, s_cols = t_rows, t_cols
        else:
            src = src_layout.select(src_sel)
            ns, nt = src.sum(1), tgt.sum(1)
            if not torch.equal(ns, nt):
                raise ValueError(
                    f"Patch: map='order' pairs positions by order, but per row the source selects "
                    f"{ns.tolist()} and the target {nt.tolist()} positions; select equal counts, or "
                    "use map='grid' to resample image patches."
                )
            s_rows, s_cols = src.nonzero(as_tuple=True)
            t_rows, t_cols = tgt.nonzero(as_tuple=True)
        return [(n, _copy_fn(ctx.source_activation(self.source, n), (s_rows, s_cols), (t_rows, t_cols))) for n in names]


def _copy_fn(src: Tensor, s: tuple[Tensor, Tensor], t: tuple[Tensor, Tensor]):  # noqa: ANN202
    def hook(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        x[t[0], t[1]] = src[s[0], s[1]].to(x)
        return x

    return hook


# (row, source positions [rs, cs], target positions [rt, ct]) per image tile
GridPair = tuple[int, Tensor, Tensor]


def _cells(layout: ModalityLayout, mask: Tensor, row: int, image: int, tile: int) -> Tensor | None:
    """Positions of one tile's patch cells as a [rows, cols] grid, or None if incomplete."""
    at = mask[row] & (layout.image_index[row] == image) & (layout.tile[row] == tile) & (layout.grid_col[row] >= 0)
    pos = at.nonzero().flatten()
    if len(pos) == 0:
        return None
    r, c = layout.grid_row[row, pos], layout.grid_col[row, pos]
    rows, cols = int(r.max()) + 1, int(c.max()) + 1
    if len(pos) != rows * cols:
        return None
    grid = torch.empty(rows, cols, dtype=torch.long)
    grid[r, c] = pos
    return grid


def _grid_pairs(src: ModalityLayout, tgt: ModalityLayout, src_sel: Selector, tgt_sel: Selector) -> list[GridPair]:
    sm, tm = src.select(src_sel) & src.select(Image()), tgt.select(tgt_sel) & tgt.select(Image())
    pairs: list[GridPair] = []
    for row in range(tgt.shape[0]):
        for image in tgt.image_index[row][tm[row]].unique().tolist():
            for tile in tgt.tile[row][tm[row] & (tgt.image_index[row] == image)].unique().tolist():
                t_grid = _cells(tgt, tm, row, image, tile)
                s_grid = _cells(src, sm, row, image, tile)
                if t_grid is None or s_grid is None:
                    raise ValueError(
                        f"Patch(map='grid'): image {image} tile {tile} of row {row} has no complete "
                        "patch grid in both runs; select whole images, or give an explicit map."
                    )
                pairs.append((row, s_grid, t_grid))
    if not pairs:
        raise ValueError("Patch(map='grid'): the target positions hold no image patches.")
    return pairs


def _grid_fn(src: Tensor, pairs: list[GridPair]):  # noqa: ANN202
    def hook(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        for row, s_grid, t_grid in pairs:
            grid = rearrange(src[row, s_grid.flatten()], "(h w) d -> 1 d h w", h=s_grid.shape[0])
            grid = F.interpolate(grid.float(), size=tuple(t_grid.shape), mode="bilinear", align_corners=False)
            x[row, t_grid.flatten()] = rearrange(grid, "1 d h w -> (h w) d").to(x)
        return x

    return hook


@torch.no_grad()
def patching_sweep(
    model: "HookedMLLM",
    clean: Any,
    corrupted: Any,
    metric: Callable[[Tensor], Tensor],
    *,
    layers: Sequence[int] | None = None,
    positions: dict[str, Selector] | None = None,
    component: str = "resid_pre",
    map: str = "same",
) -> Float[Tensor, "layer group"]:
    """Normalised patching effect ``(m_patch - m_corrupt) / (m_clean - m_corrupt)``.

    One patched run per (layer, position group): ``component`` activations of the clean
    run are written into the corrupted run at the group's positions. ``metric(logits)``
    returns a scalar or one value per row (averaged). Rows of the result follow
    ``layers`` (default all), columns the order of ``positions`` (default all positions).
    """
    clean, corrupted = model._as_inputs(clean), model._as_inputs(corrupted)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    groups = positions or {"all": NonPad()}
    m_clean = float(metric(model(clean)).float().mean())
    m_corrupt = float(metric(model(corrupted)).float().mean())
    if abs(m_clean - m_corrupt) < 1e-12:
        raise ValueError(
            f"patching_sweep: the metric is {m_clean:.6g} on both the clean and the corrupted run, "
            "so the normalised effect is undefined; choose a corruption that changes the metric."
        )
    hook = COMPONENTS.get(component, component)
    names = [f"blocks.{l}.{hook}" for l in layers]
    for n in names:
        model._check_name(n)
    _, clean_cache = model.run_with_cache(clean, names_filter=names)
    shared = {("clean", n): clean_cache[n] for n in names}
    effect = torch.empty(len(layers), len(groups))
    for i, l in enumerate(layers):
        for j, sel in enumerate(groups.values()):
            spec = Patch(layers=l, source="clean", component=component, positions=sel, map=map)
            hooks = compile_hooks(model, spec, corrupted, {"clean": clean}, source_caches=shared)
            m = float(metric(model.run_with_hooks(corrupted, fwd_hooks=hooks)).float().mean())
            effect[i, j] = (m - m_corrupt) / (m_clean - m_corrupt)
    return effect
