"""Activation patching: from a source run into this run, at the same or mapped positions.

``map`` says how source positions meet target positions:

- ``"same"``: the same positions (the two runs must have the same layout shape);
- ``"order"``: the k-th position ``source_positions`` picks in a row goes to the k-th
  position ``positions`` picks (an explicit map, e.g. image positions of run A into text
  positions of run B). Rows may select different counts from one another (ragged batches),
  but in each row the source and the target counts must be equal: otherwise an error naming
  the rows and counts (equalise with ``First(n, of=...)``, or use ``"grid"``);
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
from jaxtyping import Float
from torch import Tensor

from hooks_mm.interventions.base import Context, Edit, Intervention, source_key
from hooks_mm.layout import Modality, ModalityLayout
from hooks_mm.selectors import NonPad, Selector

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
            raise ValueError(f"Patch: map {self.map!r} is not one of {MAPS}: pass one of these.")
        if not isinstance(self.component, str) or (
            self.component not in COMPONENTS and "hook" not in self.component.split(".")[-1]
        ):
            raise ValueError(
                f"Patch: component {self.component!r} is not one of {sorted(COMPONENTS)} "
                "(or a block hook name such as 'mlp.hook_post'): pass one of these."
            )
        if not isinstance(self.source, str):
            raise TypeError(
                f"Patch: source names a run ({self.source!r:.40} is not a name): Patch(..., source='clean') and "
                "pass the inputs at run time, sources={'clean': inputs}."
            )

    def edits(self, ctx: Context) -> list[Edit]:
        hook = COMPONENTS.get(self.component, self.component)
        names = [ctx.position_hook(hook, l, "Patch") for l in ctx.layers(self.layers, "Patch")]
        src_layout = ctx.source(self.source).layout
        if src_layout.shape[0] != ctx.layout.shape[0]:
            raise ValueError(
                f"Patch: source {self.source!r} has {src_layout.shape[0]} rows, this run "
                f"{ctx.layout.shape[0]} (row b of the source patches row b of the target): pass a source batch "
                "with one row per row of this batch."
            )
        tgt = ctx.mask(self.positions, "Patch target")
        src_sel = self.source_positions if self.source_positions is not None else self.positions
        if self.map == "grid":
            ctx.mask(src_sel, "Patch source", src_layout, padding="error")
            pairs = grid_pairs(src_layout, ctx.layout, src_sel, self.positions)
            return [Edit(n, ("grid", ctx.read(self.source, n), pairs, ctx.layout.shape)) for n in names]
        if self.map == "same":
            if self.source_positions is not None:
                raise ValueError(
                    "Patch: source_positions needs a position map: use map='order' for an explicit "
                    "position map, or map='grid' to resample image patches over the 2-D patch grid."
                )
            src = tgt = ctx.same_positions(self.positions, self.source, "Patch")
        else:
            src = ctx.mask(src_sel, "Patch source", src_layout, padding="error")
            order_counts(src.sum(1), tgt.sum(1))
        (s_rows, s_cols), (t_rows, t_cols) = src.nonzero(as_tuple=True), tgt.nonzero(as_tuple=True)
        shape = ctx.layout.shape
        return [Edit(n, ("copy", ctx.read(self.source, n), s_rows, s_cols, t_rows, t_cols, shape)) for n in names]


def order_counts(ns: Tensor, nt: Tensor) -> None:
    """``map="order"`` on ragged batches: rows may select different counts from one another (row b's k-th
    source position goes to row b's k-th target position), but within a row the source and the target
    must select the same count; otherwise an error naming the rows, their counts and the fixes."""
    bad = (ns != nt).nonzero().flatten().tolist()
    if bad:
        rows = ", ".join(f"row {r}: source {int(ns[r])}, target {int(nt[r])}" for r in bad)
        raise ValueError(
            f"Patch: map='order' pairs the k-th source position of a row with its k-th target position, but "
            f"per row the source selects {ns.tolist()} and the target {nt.tolist()} positions ({rows}). Use "
            "map='grid' to resample image patches between images of other sizes, or equalise the counts with "
            "First(n, of=...) / LastN(n, of=...) on positions and "
            "source_positions (e.g. First(4, of=Image()))."
        )


# (row, source positions [rs, cs], target positions [rt, ct]) per image tile
GridPair = tuple[int, Tensor, Tensor]


def grid_pairs(src: ModalityLayout, tgt: ModalityLayout, src_sel: Selector, tgt_sel: Selector) -> list[GridPair]:
    """Per target image tile among ``tgt_sel``: its patch grid and the same tile's grid in the source."""
    sm, tm = src.select(src_sel), tgt.select(tgt_sel)
    img = tm & (tgt.modality == Modality.IMAGE)
    pairs: list[GridPair] = []
    for row in range(tgt.shape[0]):
        for image in tgt.image_index[row][img[row]].unique().tolist():
            for tile in tgt.tile[row][img[row] & (tgt.image_index[row] == image)].unique().tolist():
                t_grid, s_grid = tgt.grid(row, image, tile, within=tm), src.grid(row, image, tile, within=sm)
                if t_grid is None or s_grid is None:
                    raise ValueError(
                        f"Patch(map='grid'): image {image} tile {tile} of row {row} has no complete "
                        "patch grid in both runs (the grid map pairs image i, tile t of the source with "
                        "image i, tile t of the target); select whole images present in both, or give "
                        "an explicit map (map='order')."
                    )
                pairs.append((row, s_grid, t_grid))
    if not pairs:
        raise ValueError("Patch(map='grid'): the target positions hold no image patches.")
    return pairs


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
    clean, corrupted = model.prepare(clean), model.prepare(corrupted)
    if positions is not None and not positions:
        raise ValueError("patching_sweep: positions={} has no group; give {name: selector}, or None for all positions.")
    groups = positions or {"all": NonPad()}
    ctx = Context(model, corrupted, {"clean": clean})
    layers = ctx.layers(layers, "patching_sweep")
    specs = [[Patch(l, "clean", component, sel, map=map) for sel in groups.values()] for l in layers]
    for row in specs:  # every cell checked before anything runs
        for spec in row:
            spec.edits(ctx)
    hook = COMPONENTS.get(component, component)
    names = [model.hook_name(f"blocks.{l}.{hook}") for l in layers]
    clean_logits, clean_cache = model.run_with_cache(clean, names_filter=names)
    m_clean = _metric(metric, clean_logits, "clean")
    m_corrupt = _metric(metric, model(corrupted), "corrupted")
    if abs(m_clean - m_corrupt) < 1e-12:
        raise ValueError(
            f"patching_sweep: the metric is {m_clean:.6g} on both the clean and the corrupted run, "
            "so the normalised effect is undefined; choose a corruption that changes the metric."
        )
    shared = {source_key("clean", n): clean_cache[n] for n in names}
    effect = torch.empty(len(layers), len(groups))
    for i, row in enumerate(specs):
        for j, spec in enumerate(row):
            hooks = spec.compile(model, corrupted, {"clean": clean}, store=shared)
            m = _metric(metric, model.run_with_hooks(corrupted, fwd_hooks=hooks), "patched")
            effect[i, j] = (m - m_corrupt) / (m_clean - m_corrupt)
    return effect


def _metric(metric: Callable[[Tensor], Tensor], logits: Tensor, run: str) -> float:
    """The mean of ``metric(logits)``: a finite scalar or one finite value per row."""
    value = metric(logits)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value))
    if not isinstance(value, Tensor) or value.dim() > 1 or (value.dim() == 1 and len(value) != logits.shape[0]):
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"patching_sweep: metric(logits) gave {got} on the {run} run; return a scalar or one value per "
            f"row ({logits.shape[0]}), e.g. lambda l: l[last].log_softmax(-1)[..., answer]."
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"patching_sweep: metric(logits) is not finite on the {run} run ({value.tolist()}).")
    return float(value.float().mean())
