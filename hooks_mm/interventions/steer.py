"""Steering: add a vector at chosen positions.

Example::

    steer = Steer(layers=3, vector=v.tolist(), positions=Text(), scale=2.0)
    model.run_with_interventions(inputs, steer)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hooks_mm.interventions.base import Context, Edit, Intervention
from hooks_mm.selectors import NonPad, Selector


@dataclass
class Steer(Intervention):
    """Add ``scale * vector`` at ``positions`` of ``hook`` (default the residual stream)."""

    layers: int | list[int] | None
    vector: list[float] = field(default_factory=list)
    positions: Selector = field(default_factory=NonPad)
    scale: float = 1.0
    hook: str = "hook_resid_post"

    def edits(self, ctx: Context) -> list[Edit]:
        mask = ctx.mask(self.positions, "Steer")
        v = torch.as_tensor(self.vector, dtype=torch.float32)
        out = []
        for l in ctx.layers(self.layers, "Steer"):
            name = ctx.hook_name(self.hook, l)
            width = ctx.width(name)
            if v.dim() != 1 or (width is not None and v.shape[-1] != width):
                raise ValueError(
                    f"Steer: vector has shape {tuple(v.shape)} but {name} has width {width}: give {width} numbers."
                )
            out.append(Edit(name, ("steer", mask, v, float(self.scale))))
        return out
