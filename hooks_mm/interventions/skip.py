"""Compute skipping: the MLP, the attention or the whole block skipped at chosen positions.

Example::

    skip = Skip(component="mlp", layers=layer_window(0, 8, interval=2), positions=Image())
    model.run_with_interventions(inputs, skip)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hooks_mm.interventions.base import Context, Edit, Intervention
from hooks_mm.selectors import NonPad, Selector

SKIPPABLE = {"mlp": "hook_mlp_out", "attn": "hook_attn_out", "block": None}


def layer_window(start: int, end: int, interval: int = 1) -> list[int]:
    """Layers ``start, start + interval, ... < end`` (the compute-skipping schedule)."""
    return list(range(start, end, interval))


@dataclass
class Skip(Intervention):
    """Skip the MLP, the attention, or the whole block at ``positions`` in ``layers``.

    Skipping a branch zeroes what it adds to the residual stream there; skipping the block
    makes ``resid_post = resid_pre`` there (the implicit-alignment paper's compute skipping).
    """

    layers: int | list[int] | None
    component: str = "mlp"
    positions: Selector = field(default_factory=NonPad)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.component not in SKIPPABLE:
            raise ValueError(
                f"Skip: component {self.component!r} is not one of {sorted(SKIPPABLE)}: pass one of these."
            )

    def edits(self, ctx: Context) -> list[Edit]:
        mask = ctx.mask(self.positions, "Skip")
        out = []
        for l in ctx.layers(self.layers, "Skip"):
            if self.component == "block":
                key = ctx.new_key(f"resid_pre {l}")
                out.append(Edit(ctx.hook_name("hook_resid_pre", l), ("keep", key)))
                out.append(Edit(ctx.hook_name("hook_resid_post", l), ("restore", mask, key)))
            else:
                out.append(Edit(ctx.hook_name(SKIPPABLE[self.component], l), ("zero", mask)))
        return out
