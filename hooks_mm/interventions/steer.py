"""Steering: add a vector at chosen positions.

Example::

    steer = Steer(layers=3, vector=v.tolist(), positions=Text(), scale=2.0)
    model.run_with_interventions(inputs, steer)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hooks_mm.interventions.base import Context, Edit, Intervention, check_finite, check_number
from hooks_mm.selectors import NonPad, Selector


@dataclass
class Steer(Intervention):
    """Add ``scale * vector`` at ``positions`` of ``hook`` (default the residual stream).

    ``vector``: a list or 1-D tensor of finite numbers, as wide as the hook (``d_model`` for
    the residual stream); ``scale``: a finite number.
    """

    layers: int | list[int] | None
    vector: list[float] = field(default_factory=list)
    positions: Selector = field(default_factory=NonPad)
    scale: float = 1.0
    hook: str = "hook_resid_post"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.vector, (Tensor, list, tuple)) and hasattr(self.vector, "tolist"):
            self.vector = self.vector.tolist()  # a numpy array
        v = self.vector
        ok = isinstance(v, (list, tuple)) and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)
        ok = ok or (
            isinstance(v, Tensor) and v.dim() == 1 and (v.is_floating_point() or v.dtype in (torch.int32, torch.int64))
        )
        if not ok or len(v) == 0:
            raise TypeError(
                f"Steer: vector must be a non-empty list or 1-D tensor of numbers (the direction to add), got "
                f"{v!r:.60}: pass the direction as vector= (the arguments are Steer(layers, vector, positions, scale, "
                "hook), e.g. Steer(layers=3, vector=v.tolist(), scale=1.0))."
            )
        if isinstance(v, tuple):
            self.vector = list(v)
        check_finite(self.vector, "Steer: vector")
        check_number(self.scale, "Steer: scale")

    def edits(self, ctx: Context) -> list[Edit]:
        mask = ctx.mask(self.positions, "Steer")
        v = torch.as_tensor(self.vector).detach().float().cpu()
        out = []
        for l in ctx.layers(self.layers, "Steer"):
            name = ctx.position_hook(self.hook, l, "Steer")
            width = ctx.width(name)
            if width is not None and v.shape[-1] != width:
                raise ValueError(
                    f"Steer: vector has {v.shape[-1]} numbers but {name} has width {width}: give {width} numbers."
                )
            out.append(Edit(name, ("steer", mask, v, float(self.scale))))
        return out
